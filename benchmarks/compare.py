"""``fusionpipe compare`` on a large experiment: wall time of :func:`pipelines.analysis.compare.compare`.

A temporary sqlite MLflow store is filled with N runs (three params, one of which differs, a data
digest tag and three ``val/`` metrics over five epochs, one ``log_batch`` per run), then compared
without ``--best`` and without ``--out``, i.e. the runs are read by paged ``search_runs`` only and no
metric history is requested. The target is at most 5 s for 1000 runs.

Ratios: ``compare_seconds_1000_runs`` (median of three compares; with ``--quick`` one compare of
the same 1000 runs).

    python benchmarks/compare.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402

NUM_RUNS = 1000
EPOCHS = 5


def fill(uri: str, n: int) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("bench")
    for i in range(n):
        run = client.create_run(exp_id, run_name=f"run{i:04d}")
        metrics = [
            Metric(k, v + step / 100 + i / 1e4, 0, step)
            for step in range(EPOCHS)
            for k, v in (("val/semseg/miou", 0.3), ("val/depth/rmse", 1.0), ("val/normals/mean", 30.0))
        ]
        params = [Param("model.name", "mtinet"), Param("train.epochs", str(EPOCHS)), Param("train.lr", str(i % 7))]
        client.log_batch(
            run.info.run_id, metrics=metrics, params=params, tags=[RunTag("data.manifest_digest", "a" * 64)]
        )
        client.set_terminated(run.info.run_id)


def main() -> None:
    from pipelines.analysis.compare import compare

    args = parse_args(__doc__.splitlines()[0])
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/m.db"
        t0 = time.perf_counter()
        fill(uri, NUM_RUNS)
        fill_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = compare(uri, experiment="bench")
            times.append(time.perf_counter() - t0)
        if len(result["runs"]) != NUM_RUNS or result["differing_params"] != ["train.lr"]:
            raise RuntimeError(f"compare returned {len(result['runs'])} runs, params {result['differing_params']}")
    seconds = statistics.median(times)
    results = [{"runs": NUM_RUNS, "fill_seconds": round(fill_s, 2), "compare_seconds": [round(t, 3) for t in times]}]
    emit("compare", results, {"compare_seconds_1000_runs": round(seconds, 3)}, args.json)


if __name__ == "__main__":
    main()
