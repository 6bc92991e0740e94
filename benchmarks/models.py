"""Parameters, FLOPs and CPU latency of every registered model at 240×320 (docs/models.md).

``python benchmarks/models.py [--quick] [--json]``. Ratios:
- ``mtinet_flops_vs_single_tasks``: MTI-Net with 4 tasks over the sum of four ``single_task``
  networks on the same backbone (HRNet-18), as MTI-Net's Table comparing against single-task
  learning; ``mtinet_flops_vs_single_tasks@hrnet32`` and ``@hrnet48``: the same on the official
  code's two larger HRNet configs (FLOPs only: they are counted on the meta device, nothing runs);
- ``cen_params_vs_unimodal``: ``cen`` over its unimodal network with the same encoder
  (``fusion.models.cen.unimodal_equivalent``).
``--quick`` builds every model at width 0.25 and times one run after one warm-up.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import fusion  # noqa: E402
from benchmarks._common import emit, parse_args  # noqa: E402
from fusion.backbones import HRNET_SPECS, scale_channels  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402

HEIGHT, WIDTH = 240, 320
MTL_TASKS = ["semseg", "depth", "normals", "edge"]
# Per-model scope; models not listed get the 4 NYUD tasks on RGB with ResNet-18.
SCOPE = {
    "single_task": {"tasks": ["semseg"]},
    "ann": {"tasks": ["semseg"]},
    "fcn": {"tasks": ["semseg"]},
    "nonlocal": {"tasks": ["semseg"]},
    "single_modal": {"tasks": ["semseg"]},
    "cen": {"tasks": ["semseg"], "modalities": ["rgb", "depth"]},
    "early_fusion": {"tasks": ["semseg"], "modalities": ["rgb", "depth"]},
    "late_fusion": {"tasks": ["semseg"], "modalities": ["rgb", "depth"]},
    "mtinet": {"backbone": "hrnet18"},
}


def config(name: str, width: float, **override) -> ModelConfig:
    d = {
        "name": name,
        "tasks": MTL_TASKS,
        "modalities": ["rgb"],
        "backbone": "resnet18",
        "width": width,
        "num_classes": 40,
        **SCOPE.get(name, {}),
        **override,
    }
    return ModelConfig.from_dict(d)


def inputs_for(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = {"rgb": torch.rand(1, 3, HEIGHT, WIDTH, generator=g), "depth": torch.rand(1, 1, HEIGHT, WIDTH, generator=g) * 5}
    return {m: x[m] for m in cfg.modalities}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops(model: nn.Module, x: dict[str, torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def mtinet_vs_single_tasks(backbone: str, width: float, device: str = "cpu") -> float:
    """FLOPs of MTI-Net (4 tasks) over the sum of the four ``single_task`` networks on HRNet ``backbone``.

    On ``device="meta"`` the models are built and run without memory or arithmetic: FlopCounterMode
    counts from shapes alone, so large backbones cost nothing to count.
    """
    # The official HRNetV2 head keeps the full sum of the scales' channels as its hidden width
    # (720 for W48; the project's default caps it at 512 for ResNet-50/101).
    head = {"head_channels": sum(scale_channels(c, width) for c in HRNET_SPECS[backbone].channels)}
    with torch.device(device):
        mtinet = fusion.build_model(config("mtinet", width, backbone=backbone, options=head)).eval()
        singles = [
            fusion.build_model(config("single_task", width, tasks=[t], backbone=backbone, options=head)).eval()
            for t in MTL_TASKS
        ]
        x = {m: t.to(device) for m, t in inputs_for(config("mtinet", width)).items()}
    return flops(mtinet, x) / sum(flops(m, x) for m in singles)


@torch.no_grad()
def latency_ms(model: nn.Module, x: dict[str, torch.Tensor], runs: int) -> float:
    model(x)  # warm-up: allocator and kernel selection
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    width = 0.25 if args.quick else 1.0
    runs = 1 if args.quick else 5
    results = []
    for name in fusion.list_models():
        cfg = config(name, width)
        model = fusion.build_model(cfg).eval()
        x = inputs_for(cfg)
        results.append(
            {
                "model": name,
                "backbone": cfg.backbone,
                "tasks": cfg.tasks,
                "modalities": cfg.modalities,
                "width": width,
                "input": [HEIGHT, WIDTH],
                "params": params(model),
                "flops": flops(model, x),
                "latency_ms": round(latency_ms(model, x, runs), 2),
            }
        )
    ratios = {"mtinet_flops_vs_single_tasks": round(mtinet_vs_single_tasks("hrnet18", width), 4)}
    for backbone in ("hrnet32", "hrnet48"):
        ratios[f"mtinet_flops_vs_single_tasks@{backbone}"] = round(mtinet_vs_single_tasks(backbone, width, "meta"), 4)

    from fusion.models.cen import unimodal_equivalent

    cen_cfg = config("cen", width)
    ratio_params = params(fusion.build_model(cen_cfg)) / params(unimodal_equivalent(cen_cfg))
    ratios["cen_params_vs_unimodal"] = round(ratio_params, 4)
    emit("models", results, ratios, args.json)


if __name__ == "__main__":
    main()
