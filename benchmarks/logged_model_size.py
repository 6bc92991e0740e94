"""What a training run logs to MLflow, in bytes, with the optimizer state in checkpoints/best (before) and
without it (now: a weights-only best checkpoint, pipelines/checkpoints.py ``write_weights_only``).

``python benchmarks/logged_model_size.py [--quick] [--json]``: builds the HRNet-48 MTI-Net of
``configs/nyud/mtinet_hrnet48.yaml`` (40 NYUD classes), gives its optimizer
the state one step leaves (Adam: two tensors per parameter), writes a checkpoint as a training worker does
and its weights-only copy, and adds up a run's artifacts: ``checkpoints/best``, ``checkpoints/last`` and the
logged model (``model``, whose pt2 file holds the same tensors as ``model.pt``; counted as that size).
Nothing is trained. ``--quick``: the same model at width 0.25. Ratios: ``best_checkpoint_now_vs_before`` and
``run_artifacts_now_vs_before``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import emit, parse_args  # noqa: E402
from pipelines.checkpoints import MODEL, build_checkpoint_model, save_checkpoint, write_weights_only  # noqa: E402
from pipelines.config import load_config, model_config  # noqa: E402
from pipelines.train.steps import make_optimizer  # noqa: E402

NUM_CLASSES = 40
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nyud" / "mtinet_hrnet48.yaml"


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    overrides = ["model.pretrained=null"] + (["model.width=0.25"] if args.quick else [])
    cfg = load_config(CONFIG, overrides)
    mcfg = model_config(cfg, NUM_CLASSES)
    model = build_checkpoint_model(mcfg)
    optimizer = make_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the state an optimizer holds after its first step
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        full = save_checkpoint(
            Path(tmp) / "full", model, {"epoch": 0, "model_config": mcfg}, {"optimizer": optimizer.state_dict()}
        )
        weights = write_weights_only(full, Path(tmp) / "weights")
        full_bytes, weights_bytes, model_bytes = _size(full), _size(weights), (full / MODEL).stat().st_size
    before = 2 * full_bytes + model_bytes
    now = weights_bytes + full_bytes + model_bytes
    results = [
        {
            "config": "configs/nyud/mtinet_hrnet48.yaml",
            "model": mcfg["name"],
            "backbone": mcfg["backbone"],
            "width": mcfg["width"],
            "optimizer": cfg.optim.name,
            "parameters": params,
            "checkpoint_with_optimizer_bytes": full_bytes,
            "checkpoint_weights_only_bytes": weights_bytes,
            "logged_model_bytes": model_bytes,
            "run_artifacts_before_bytes": before,
            "run_artifacts_now_bytes": now,
        }
    ]
    ratios = {
        "best_checkpoint_now_vs_before": weights_bytes / full_bytes,
        "run_artifacts_now_vs_before": now / before,
    }
    emit("logged_model_size", results, ratios, args.json)


if __name__ == "__main__":
    main()
