"""MTI-Net's deep-supervision losses at the target's resolution (official) vs at each prediction's.

``python benchmarks/deep_supervision.py [--quick] [--json]``. MTI-Net as ``configs/mtinet.yaml`` (ResNet-18
at width 0.25, four tasks, 4 scales) on synthetic scenes (``datasets/sources/synthetic.py``, 240×320;
``--quick`` 96×128), batch 4. The model is first trained for a few Adam steps on the batch with the
official loss, so that predictions are not those of random weights. Then, on the same outputs:

* every aux term (``scale_k/task``) under ``loss.aux_resolution: target`` and ``prediction``, with their
  relative difference, and the same for the total loss;
* the time of the loss's forward and backward pass alone (outputs detached, median of repeats, process
  CPU time) in both modes: ``aux_loss_time_prediction_vs_target``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, parse_args  # noqa: E402


def _batch(height: int, width: int, n: int):
    from datasets.sources.synthetic import SyntheticSource
    from datasets.transforms import to_tensors

    src = SyntheticSource(num_train=n, num_val=1, height=height, width=width, seed=0)
    tasks = ["semseg", "depth", "normals", "edge"]
    pairs = [to_tensors(src.load("train", k), tasks, ["rgb"]) for k in src.keys("train")]
    import torch

    inputs = {"rgb": torch.stack([i["rgb"] for i, _ in pairs])}
    targets = {t: torch.stack([tt[t] for _, tt in pairs]) for t in tasks}
    return inputs, targets, len(src.classes)


def _detached(outputs):
    import torch

    if isinstance(outputs, dict):
        return {k: _detached(v) for k, v in outputs.items()}
    assert isinstance(outputs, torch.Tensor)
    return outputs.detach().requires_grad_(True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    import torch

    from fusion import build_model
    from fusion.losses import MultiTaskLoss
    from pipelines.config import load_config, model_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    h, w = (96, 128) if args.quick else (240, 320)
    steps, repeats = (3, 5) if args.quick else (10, 15)
    inputs, targets, num_classes = _batch(h, w, 4)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mtinet.yaml", [])
    mcfg = model_config(cfg, num_classes=num_classes)
    model = build_model(mcfg)
    tasks = mcfg["tasks"]
    official = MultiTaskLoss(tasks)
    low = MultiTaskLoss(tasks, aux_resolution="prediction")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        total, _ = official(model(inputs), targets, model)
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        outputs = model(inputs)
    a = official(outputs, targets, model)[1]
    b = low(outputs, targets, model)[1]
    results = []
    aux_keys = sorted(k for k in a if "/" in k and not k.startswith("reg/"))
    for k in aux_keys + ["total"]:
        va, vb = float(a[k]), float(b[k])
        results.append(
            {"term": k, "target": va, "prediction": vb, "rel_diff": (vb - va) / abs(va) if va else float("nan")}
        )
    aux_rel = [abs(r["rel_diff"]) for r in results if r["term"] != "total"]

    def loss_time(crit) -> float:
        times = []
        for _ in range(repeats):
            out = _detached(outputs)
            t0 = time.process_time()
            total, _ = crit(out, targets, model)
            total.backward()
            times.append(time.process_time() - t0)
        return statistics.median(times[1:])

    t_target, t_pred = [], []
    for r in range(3):  # alternate, so that a drift in load hits both
        order = (official, low) if r % 2 == 0 else (low, official)
        for crit in order:
            (t_target if crit is official else t_pred).append(loss_time(crit))
    tt, tp = statistics.median(t_target), statistics.median(t_pred)
    results.append({"term": "loss_forward_backward_cpu_s", "target": tt, "prediction": tp, "rel_diff": (tp - tt) / tt})
    ratios = {
        "aux_loss_time_prediction_vs_target": tp / tt,
        "total_loss_rel_diff": results[len(aux_keys)]["rel_diff"],
        "aux_terms_mean_abs_rel_diff": statistics.fmean(aux_rel),
        "aux_terms_max_abs_rel_diff": max(aux_rel),
    }
    emit(f"deep_supervision@{h}x{w}", results, ratios, args.json)


if __name__ == "__main__":
    main()
