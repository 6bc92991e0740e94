"""ASHA vs FIFO on the same 8-trial sweep: how much training ASHA saves, and what it costs in the answer.

``python benchmarks/tune.py [--quick] [--json]``. One synthetic dataset, one base config (tiny
MTI-Net, semseg + depth) and one sweep spec (8 trials over the learning rate and the depth weight,
drawn with the same seed, so every sweep trains the very same 8 configurations; training is seeded),
run through ``pipelines.tune.driver.run_tune`` with FIFO (every trial trains ``max_epochs``) and with ASHA
(grace period 1) at reduction factor 3 (Hyperband's eta, the ratios) and 4 (Ray Tune's default,
reported beside). Ratios:

- ``asha_trial_epochs_vs_fifo``: epochs trained by all ASHA trials / epochs trained by all FIFO trials
  (target <= 0.4);
- ``asha_best_vs_fifo_best``: ASHA's best ``val/semseg/miou`` / FIFO's (target >= 0.95: within 5%);
- ``asha_wall_vs_fifo``: wall time of the ASHA sweep / the FIFO sweep (informative: every trial also
  pays ~10 s of Ray Train start-up, which ASHA does not save).

Trials run one at a time with one 1-CPU worker each, as ``configs/sweeps/smoke.yaml`` does, which
makes the whole benchmark deterministic (same seeds, same arrival order). Trials train at most 27 epochs,
which is 3**3, so with reduction factor 3 the rungs (1, 3, 9) and the end of training form Hyperband's
geometric ladder. Asynchronous ASHA always lets the first trial to reach a rung go on (there is nothing
to compare it with yet), so the first trial trains all 27 epochs, and the saving grows with the number
of trials. ``--quick`` runs 4 trials of 3 epochs on a smaller dataset, FIFO and ASHA at reduction factor 3
only (about 4 minutes here, most of it Ray and Ray Train start-up, which no sweep can skip): its ratios
show the mechanism, not the target set-up (27 epochs, about 20 minutes).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import yaml  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402

METRIC = "val/semseg/miou"


SCHEDULERS = (("fifo", "fifo", None), ("asha", "asha", 3), ("asha_rf4", "asha", 4))  # (label, name, reduction factor)


def _sweep(tmp: Path, label: str, scheduler: str, reduction_factor: int | None, epochs: int, trials: int) -> Path:
    sched = {"name": scheduler, "max_epochs": epochs, "grace_period": 1}
    if reduction_factor is not None:
        sched["reduction_factor"] = reduction_factor
    spec = {
        "metric": METRIC,
        "mode": "max",
        "num_samples": trials,
        "seed": 0,
        "max_concurrent_trials": 1,
        "scheduler": sched,
        "trial": {"workers": 1, "cpus_per_worker": 1},
        "space": {"optim.lr": {"loguniform": [1.0e-4, 2.0e-2]}, "loss.weights.depth": {"choice": [0.5, 1.0, 2.0]}},
    }
    p = tmp / f"{label}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from datasets.sources.synthetic import SyntheticSource
    from datasets.writer import write_dataset
    from pipelines.cli.output import stdout_to_stderr
    from pipelines.tune.driver import run_tune

    epochs, trials = (3, 4) if args.quick else (27, 8)
    n_train, n_val = (32, 16) if args.quick else (64, 32)
    schedulers = SCHEDULERS[:2] if args.quick else SCHEDULERS
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shards = tmp / "shards"
        write_dataset(
            SyntheticSource(num_train=n_train, num_val=n_val, height=64, width=80, seed=1),
            shards,
            shard_size=16,
            progress=False,
        )
        base = [
            f"data.shards={shards}",
            "data.tasks=[semseg, depth]",
            "data.loader_workers=0",
            "data.shuffle_buffer=16",
            "data.augment={hflip: 0.5}",
            "model.name=mtinet",
            "model.width=0.125",
            "train.batch_size=4",
            "train.preview_every=0",
            "optim.schedule=constant",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            "tracking.experiment=bench-tune",
            f"checkpoint.storage_path={tmp}/ray",
        ]
        results = []
        for label, scheduler, rf in schedulers:
            start = time.perf_counter()
            with stdout_to_stderr(args.json):  # Ray's progress must not mix with the JSON
                s = run_tune(
                    None, _sweep(tmp, label, scheduler, rf, epochs, trials), base, name=f"bench-{label}", verbose=0
                )
            wall = time.perf_counter() - start
            results.append(
                {
                    "scheduler": label,
                    "reduction_factor": rf,
                    "trials": s["num_trials"],
                    "max_epochs": epochs,
                    "trial_epochs": s["trial_epochs"],
                    "early_stopped": sum(r["early_stopped"] for r in s["trials"]),
                    "best_metric": s["best"]["metric"][METRIC] if s["best"] else None,
                    "wall_s": round(wall, 1),
                    "epochs_per_trial": [r["epochs"] for r in s["trials"]],
                    "best_metric_per_trial": [
                        None if r["best_metric"] is None else round(r["best_metric"], 4) for r in s["trials"]
                    ],
                }
            )
    fifo, asha = results[:2]
    for r in results[1:]:
        r["trial_epochs_vs_fifo"] = round(r["trial_epochs"] / fifo["trial_epochs"], 3)
        r["best_vs_fifo_best"] = round(r["best_metric"] / fifo["best_metric"], 4)
    ratios = {
        "asha_trial_epochs_vs_fifo": asha["trial_epochs_vs_fifo"],
        "asha_best_vs_fifo_best": asha["best_vs_fifo_best"],
        "asha_wall_vs_fifo": round(asha["wall_s"] / fifo["wall_s"], 3),
    }
    emit("tune", results, ratios, args.json)


if __name__ == "__main__":
    main()
