"""Prediction previews: target vs prediction per task, one row per sample, as one PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from datasets.codec import MEMBERS
from datasets.inspect import colorize_depth, colorize_normals, colorize_semseg
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD


def _rgb(x: Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (x.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255).astype(np.uint8)


def _task_image(task: str, t: Tensor, is_pred: bool, top: float) -> np.ndarray:
    """One target or prediction as an RGB picture, drawn by its member's kind (datasets.codec.Member)."""
    t = t.detach().cpu().float()
    kind = MEMBERS[task].kind if task in MEMBERS else "labels"
    if kind == "scalar16":  # coloured on the scale of the batch's targets, prediction and target alike
        return colorize_depth(t[0].clamp(min=0).numpy(), top)
    if kind == "normals":
        n = torch.nn.functional.normalize(t, dim=0) if is_pred else t
        return colorize_normals(n.permute(1, 2, 0).numpy())
    if kind in ("binary", "gray"):
        v = torch.sigmoid(t[0]) if is_pred else t[0]
        return np.repeat((v.numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if kind == "rgb":
        return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    ids = t.argmax(0).numpy().astype(np.uint8) if is_pred else t.numpy().astype(np.uint8)
    return colorize_semseg(ids)


def preview_grid(
    inputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    outputs: Mapping[str, Tensor],
    tasks: list[str],
    path: str | os.PathLike[str],
    max_samples: int = 4,
) -> Path:
    n = min(max_samples, next(iter(targets.values())).shape[0])
    h, w = next(iter(targets.values())).shape[-2:]
    cols = ["input"] + [f"{t} {k}" for t in tasks for k in ("target", "pred")]
    header = 14
    grid = Image.new("RGB", (w * len(cols), header + h * n), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * w + 3, 1), name, fill=(0, 0, 0))
    tops = {t: float(targets[t].max()) if t in targets else 10.0 for t in tasks}  # 0: each panel its own
    for r in range(n):
        first = _rgb(inputs["rgb"][r]) if "rgb" in inputs else colorize_depth(inputs["depth"][r, 0].cpu().numpy())
        panels = [first]
        for t in tasks:
            panels.append(_task_image(t, targets[t][r], False, tops[t]))
            panels.append(_task_image(t, outputs[t][r], True, tops[t]))
        for c, p in enumerate(panels):
            grid.paste(Image.fromarray(p), (c * w, header + r * h))
    path = Path(path)
    grid.save(path)
    return path
