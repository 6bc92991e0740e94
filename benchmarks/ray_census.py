"""Where a local Ray's background activity comes from: wake-ups and CPU time per Ray process.

Starts Ray as ``fusionpipe train`` does on a machine with no cluster (``start_local_ray``), runs an
idle one-worker Ray Train V2 run (its training function sleeps), and reads every thread's context
switches and CPU time from ``/proc`` over a window. Each wake-up of a background thread on a machine
whose cores all train pre-empts a compute thread: this is the mechanism behind
``ratios.ray_train_vs_plain_loop`` in benchmarks/train.py (docs/benchmarks.md). Linux only.

    .venv/bin/python benchmarks/ray_census.py --json     (about 1 min; --quick: 35 s)
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
    ("Train V2 helper actors", r"ray::(TrainController|PlacementGroupCleaner|_AutoscalingCoordinatorActor|"
                               r"SynchronizationActor|DatasetManager|TrainStateActor)"),
    ("idle pooled workers", r"ray::IDLE"),
    ("GCS and raylet", r"/(gcs_server|raylet) "),
    ("dashboard and its modules", r"ray/dashboard/dashboard\.py|ray-dashboard-"),
    ("dashboard and runtime-env agents", r"ray::(DashboardAgent|RuntimeEnvAgent)|dashboard/agent\.py|runtime_env/agent"),
    ("log monitor and autoscaler monitor", r"log_monitor\.py|autoscaler/_private/monitor\.py"),
)


def classify(cmdline: str) -> str | None:
    """The group of a Ray process by its command line; ``None`` for anything else."""
    for group, pattern in GROUPS:
        if re.search(pattern, cmdline):
            return group
    return None


def snapshot() -> dict[tuple[int, int], tuple[str, int, int]]:
    """``{(pid, tid): (cmdline, context switches, CPU ticks)}`` of every thread on the machine."""
    out: dict[tuple[int, int], tuple[str, int, int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for tid in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                switches = sum(int(m) for m in re.findall(r"voluntary_ctxt_switches:\s+(\d+)", status))
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[(int(pid), int(tid))] = (cmd, switches, int(fields[11]) + int(fields[12]))
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
        g = groups.setdefault(group, {"group": group, "pids": set(), "wakeups_per_s": 0.0, "cpu_share_of_one_core": 0.0})
        g["pids"].add(key[0])
        g["wakeups_per_s"] += (switches - before[key][1]) / seconds
        g["cpu_share_of_one_core"] += (ticks - before[key][2]) / ticks_per_s / seconds
    rows = []
    for g in groups.values():
        rows.append({"group": g["group"], "processes": len(g.pop("pids")),
                     "wakeups_per_s": round(g["wakeups_per_s"], 1),
                     "cpu_share_of_one_core": round(g["cpu_share_of_one_core"], 4)})
    return sorted(rows, key=lambda r: -r["wakeups_per_s"])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.train import start_local_ray

    warmup, window = (15.0, 5.0) if args.quick else (20.0, 20.0)
    start_local_ray(num_cpus=2, log_to_driver=False)
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            trainer = TorchTrainer(lambda cfg: time.sleep(cfg["sleep"]), train_loop_config={"sleep": warmup + window + 10},
                                   scaling_config=ScalingConfig(num_workers=1),
                                   run_config=RunConfig(name="census", storage_path=tmp))
            fit = threading.Thread(target=trainer.fit, daemon=True)
            fit.start()
            time.sleep(warmup)  # the run is up and idle
            before = snapshot()
            time.sleep(window)
            rows = census(before, snapshot(), window, os.sysconf("SC_CLK_TCK"))
            fit.join()
    finally:
        ray.shutdown()
    total_wake = sum(r["wakeups_per_s"] for r in rows)
    total_cpu = sum(r["cpu_share_of_one_core"] for r in rows)
    rows.append({"group": "all Ray processes", "processes": sum(r["processes"] for r in rows),
                 "wakeups_per_s": round(total_wake, 1), "cpu_share_of_one_core": round(total_cpu, 4)})
    # Measured, not targets: what an idle one-worker Ray Train run costs the machine.
    emit("ray_census", rows, {"ray_wakeups_per_s": round(total_wake, 1),
                              "ray_cpu_share_of_one_core": round(total_cpu, 4)}, args.json)


if __name__ == "__main__":
    main()
