"""The model logged to MLflow at the end of a run (``mlflow.pytorch``, pt2 serialisation), and its
registration in MLflow's model registry (``tracking.register_as``).

The logged model holds the weights of the best checkpoint and nothing else (no optimizer state). Its
input is the model's modalities concatenated on channels, normalised as in training; any batch size and
any H×W (the signature's ``-1`` dimensions): :class:`PackedModel` pads each side to a multiple of
:data:`STRIDE` and crops the outputs back. Its metadata records what a caller needs to feed it and read
it: ``normalisation``, ``classes``, ``tasks``, ``modalities``, ``input_channels``, ``output_channels``
(each task's channel range in the output), ``stride`` and ``model_config``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from fusion.config import MODALITY_CHANNELS
from pipelines.checkpoints import build_checkpoint_model, load_model_state

#: Inputs are padded to a multiple of this (the coarsest stride of every backbone).
STRIDE = 32
#: The example the model is traced with. Its sides are not multiples of STRIDE, so the traced graph
#: keeps the padding general instead of specialising it to "no padding needed".
EXAMPLE_HW = (40, 56)
#: What training fed the model (datasets.transforms.to_tensors): RGB / 255, then the ImageNet mean and
#: std; depth in metres (shard PNGs hold millimetres: png_scale 0.001).
NORMALISATION: dict[str, Any] = {
    "rgb": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "depth": {"unit": "m", "png_scale": 0.001},
}


class PackedModel(torch.nn.Module):
    """Single-tensor wrapper for ``mlflow.pytorch`` (its pyfunc takes one array, returns one):
    input = the modalities concatenated on channels, output = task predictions concatenated, both at the
    input's H×W (padded to :data:`STRIDE` inside, cropped back)."""

    def __init__(self, model: torch.nn.Module, modalities: list[str], channels: dict[str, int], tasks: list[str]):
        super().__init__()
        self.model, self.modalities, self.channels, self.tasks = model, modalities, channels, tasks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        # Always 1..STRIDE rows and columns, never 0: one traced graph serves every size.
        x = F.pad(x, (0, STRIDE - w % STRIDE, 0, STRIDE - h % STRIDE))
        inputs, start = {}, 0
        for m in self.modalities:
            inputs[m] = x[:, start : start + self.channels[m]]
            start += self.channels[m]
        out = self.model(inputs)
        return torch.cat([out[t].float() for t in self.tasks], dim=1)[:, :, :h, :w]


def model_metadata(meta: dict[str, Any], layout: dict[str, list[int]]) -> dict[str, Any]:
    mcfg = {**meta["model_config"], "pretrained": None}
    return {
        "input_channels": {m: MODALITY_CHANNELS[m] for m in mcfg["modalities"]},
        "output_channels": layout,
        "model_config": mcfg,
        "tasks": list(mcfg["tasks"]),
        "modalities": list(mcfg["modalities"]),
        "classes": list(meta.get("classes") or []),
        "normalisation": meta.get("normalisation") or NORMALISATION,
        "stride": STRIDE,
    }


def log_final_model(tracker: Any, ckpt_dir: str, meta: dict[str, Any], sample_hw: tuple[int, int] | None = None) -> str:
    """Log the model of checkpoint ``ckpt_dir`` to the tracker's run; its model URI. ``sample_hw``: the
    size of the traced example (default :data:`EXAMPLE_HW`); the logged model takes any size."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mcfg = meta["model_config"]
    model = build_checkpoint_model(mcfg)  # model.pt holds every weight: the ImageNet file is not read
    load_model_state(model, ckpt_dir)
    model.eval()
    packed = PackedModel(model, mcfg["modalities"], dict(MODALITY_CHANNELS), mcfg["tasks"]).eval()
    hw = sample_hw or EXAMPLE_HW
    c_in = sum(MODALITY_CHANNELS[m] for m in mcfg["modalities"])
    # Two samples, not one: torch.export specialises a dimension of size 1, and a batch-1 example
    # gave a logged model that refused any other batch size ("Guard failed: x.size()[0] == 1").
    example = np.zeros((2, c_in, *hw), np.float32)
    with torch.no_grad():
        outs = model({m: torch.zeros(2, MODALITY_CHANNELS[m], *hw) for m in mcfg["modalities"]})
    layout, start = {}, 0
    for t in mcfg["tasks"]:
        layout[t] = [start, start + outs[t].shape[1]]
        start += outs[t].shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c_in, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, start, -1, -1))]),
    )
    mlflow.set_tracking_uri(tracker.uri)
    with mlflow.start_run(run_id=tracker.run_id):
        # pt2 (torch.export) rather than pickle: loading the logged model never unpickles code.
        info = mlflow.pytorch.log_model(
            packed,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata=model_metadata(meta, layout),
        )
    return info.model_uri
