"""The model logged to MLflow at the end of a run (``mlflow.pytorch``, pt2 serialisation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fusion import build_model
from pipelines.checkpoints import load_model_state


class PackedModel(torch.nn.Module):
    """Single-tensor wrapper for ``mlflow.pytorch`` (its pyfunc takes one array, returns one):
    input = the modalities concatenated on channels, output = task predictions concatenated."""

    def __init__(self, model: torch.nn.Module, modalities: list[str], channels: dict[str, int], tasks: list[str]):
        super().__init__()
        self.model, self.modalities, self.channels, self.tasks = model, modalities, channels, tasks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, start = {}, 0
        for m in self.modalities:
            inputs[m] = x[:, start : start + self.channels[m]]
            start += self.channels[m]
        out = self.model(inputs)
        return torch.cat([out[t].float() for t in self.tasks], dim=1)


def log_final_model(tracker: Any, ckpt_dir: str, meta: dict[str, Any], sample_hw: tuple[int, int]) -> None:
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    mcfg = meta["model_config"]
    model = build_model(mcfg)
    load_model_state(model, ckpt_dir)
    model.eval()
    channels = {"rgb": 3, "depth": 1}
    packed = PackedModel(model, mcfg["modalities"], channels, mcfg["tasks"]).eval()
    # Two samples, not one: torch.export specialises a dimension of size 1, and a batch-1 example
    # gave a logged model that refused any other batch size ("Guard failed: x.size()[0] == 1").
    example = np.zeros((2, sum(channels[m] for m in mcfg["modalities"]), *sample_hw), np.float32)
    with torch.no_grad():
        outs = model({m: torch.zeros(2, channels[m], *sample_hw) for m in mcfg["modalities"]})
        out = packed(torch.from_numpy(example)).numpy()
    layout, start = {}, 0
    for t in mcfg["tasks"]:
        layout[t] = [start, start + outs[t].shape[1]]
        start += outs[t].shape[1]
    mlflow.set_tracking_uri(tracker.uri)
    with mlflow.start_run(run_id=tracker.run_id):
        # pt2 (torch.export) rather than pickle: loading the logged model never unpickles code.
        mlflow.pytorch.log_model(
            packed,
            name="model",
            signature=infer_signature(example, out),
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={
                "input_channels": {m: channels[m] for m in mcfg["modalities"]},
                "output_channels": layout,
                "model_config": mcfg,
            },
        )
