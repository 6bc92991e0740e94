"""Where a local Ray's background activity comes from: wake-ups and CPU time per Ray process.

Starts Ray as ``fusionpipe train`` does on a machine with no cluster (``start_local_ray``), runs an
idle one-worker Ray Train V2 run (its training function sleeps), and reads the voluntary context
switches (each is followed by a wake-up) and CPU time of every thread of the Ray processes this
script started from ``/proc`` over a window. Each wake-up of a background thread on a machine
whose cores all train pre-empts a compute thread: this is the mechanism behind
``ratios.ray_train_vs_plain_loop`` in benchmarks/train.py (docs/benchmarks.md). Linux only.

    .venv/bin/python benchmarks/ray_census.py --json     (about 1 min; --quick: about 45 s)
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402

# (group, pattern on the process command line), first match wins.
GROUPS = (
    ("training worker", r"ray::RayTrainWorker"),
    (
        "Train V2 helper actors",
        r"ray::(TrainController|PlacementGroupCleaner|_AutoscalingCoordinatorActor|"
        r"SynchronizationActor|DatasetManager|TrainStateActor)",
    ),
    ("idle pooled workers", r"ray::IDLE"),
    ("GCS and raylet", r"^\S*/(gcs_server|raylet)\s"),
    ("dashboard and its modules", r"ray/dashboard/dashboard\.py|ray-dashboard-"),
    (
        "dashboard and runtime-env agents",
        r"ray::(DashboardAgent|RuntimeEnvAgent)|dashboard/agent\.py|runtime_env/agent",
    ),
    ("log monitor and autoscaler monitor", r"log_monitor\.py|autoscaler/(_private|v2)/monitor\.py"),
)


def classify(cmdline: str) -> str | None:
    """The group of a Ray process by its command line; ``None`` for anything else."""
    for group, pattern in GROUPS:
        if re.search(pattern, cmdline):
            return group
    return None


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (parent ids from ``/proc/PID/stat``)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def voluntary_switches(status: str) -> int:
    """``voluntary_ctxt_switches`` of a ``/proc/.../status`` text (not ``nonvoluntary_ctxt_switches``)."""
    m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else 0


def snapshot(root: int | None = None) -> dict[tuple[int, int], tuple[str, int, int]]:
    """``{(pid, tid): (cmdline, voluntary context switches, CPU ticks)}`` of every thread of ``root``
    and its descendants (default: this process's), so another Ray on the machine is not counted.

    A voluntary switch is a thread that blocked, so each one is followed by a wake-up.
    """
    out: dict[tuple[int, int], tuple[str, int, int]] = {}
    for pid in _descendants(os.getpid() if root is None else root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for tid in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[(pid, int(tid))] = (cmd, voluntary_switches(status), int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):  # the thread ended while being read
            continue
    return out


def census(before: dict, after: dict, seconds: float, ticks_per_s: int) -> list[dict[str, Any]]:
    """Per group: processes, wake-ups per second and share of one core, from two snapshots."""
    groups: dict[str, dict[str, Any]] = {}
    for key, (cmd, switches, ticks) in after.items():
        group = classify(cmd)
        if group is None or key not in before:
            continue
        g = groups.setdefault(
            group, {"group": group, "pids": set(), "wakeups_per_s": 0.0, "cpu_share_of_one_core": 0.0}
        )
        g["pids"].add(key[0])
        g["wakeups_per_s"] += (switches - before[key][1]) / seconds
        g["cpu_share_of_one_core"] += (ticks - before[key][2]) / ticks_per_s / seconds
    rows = []
    for g in groups.values():
        rows.append(
            {
                "group": g["group"],
                "processes": len(g.pop("pids")),
                "wakeups_per_s": round(g["wakeups_per_s"], 1),
                "cpu_share_of_one_core": round(g["cpu_share_of_one_core"], 4),
            }
        )
    return sorted(rows, key=lambda r: -r["wakeups_per_s"])


def _wait_for(group: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(classify(cmd) == group for cmd, _, _ in snapshot().values()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no {group} process appeared within {timeout:.0f} s")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.train.driver import start_local_ray

    settle, window = (5.0, 5.0) if args.quick else (10.0, 20.0)
    start_local_ray(num_cpus=os.cpu_count() or 1, log_to_driver=False)  # as init_ray does without a cluster
    failed: list[BaseException] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = TorchTrainer(
                lambda cfg: time.sleep(cfg["sleep"]),
                train_loop_config={"sleep": settle + window + 10},
                scaling_config=ScalingConfig(num_workers=1),
                run_config=RunConfig(name="census", storage_path=tmp),
            )

            def fit() -> None:
                try:
                    trainer.fit()
                except BaseException as e:  # reported below: no figures for a run that did not run
                    failed.append(e)

            runner = threading.Thread(target=fit, daemon=True)
            runner.start()
            _wait_for("training worker", timeout=120)
            time.sleep(settle)  # the run is up and idle
            before, t0 = snapshot(), time.monotonic()
            time.sleep(window)
            after, seconds = snapshot(), time.monotonic() - t0
            runner.join(timeout=120)
    finally:
        ray.shutdown()
    if failed or runner.is_alive():
        raise SystemExit(f"ray_census: the idle Ray Train run failed: {failed[0] if failed else 'did not finish'}")
    rows = census(before, after, seconds, os.sysconf("SC_CLK_TCK"))
    if not any(r["group"] == "training worker" for r in rows):
        raise SystemExit("ray_census: the training worker was not seen in both snapshots")
    total_wake = sum(r["wakeups_per_s"] for r in rows)
    total_cpu = sum(r["cpu_share_of_one_core"] for r in rows)
    rows.append(
        {
            "group": "all Ray processes",
            "processes": sum(r["processes"] for r in rows),
            "wakeups_per_s": round(total_wake, 1),
            "cpu_share_of_one_core": round(total_cpu, 4),
            "window_s": round(seconds, 2),
        }
    )
    # Measured, not targets: what an idle one-worker Ray Train run costs the machine.
    emit(
        "ray_census",
        rows,
        {"ray_wakeups_per_s": round(total_wake, 1), "ray_cpu_share_of_one_core": round(total_cpu, 4)},
        args.json,
    )


if __name__ == "__main__":
    main()
