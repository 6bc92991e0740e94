"""Prediction previews: target vs prediction per task, one row per sample, as one PNG."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from datasets.inspect import colorize_depth, colorize_normals, colorize_semseg
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD


def _rgb(x: Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (x.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255).astype(np.uint8)


def _task_image(task: str, t: Tensor, is_pred: bool, max_depth: float) -> np.ndarray:
    t = t.detach().cpu().float()
    if task == "semseg":
        ids = t.argmax(0).numpy().astype(np.uint8) if is_pred else t.numpy().astype(np.uint8)
        return colorize_semseg(ids)
    if task == "depth":
        return colorize_depth(t[0].clamp(min=0).numpy(), max_depth)
    if task == "normals":
        n = torch.nn.functional.normalize(t, dim=0) if is_pred else t
        return colorize_normals(n.permute(1, 2, 0).numpy())
    if task in ("edge", "sal"):
        v = torch.sigmoid(t[0]) if is_pred else t[0]
        return np.repeat((v.numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1)
    ids = t.argmax(0).numpy().astype(np.uint8) if is_pred else t.numpy().astype(np.uint8)
    return colorize_semseg(ids)


def preview_grid(inputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], outputs: Mapping[str, Tensor],
                 tasks: list[str], path: str | os.PathLike[str], max_samples: int = 4) -> Path:
    n = min(max_samples, next(iter(targets.values())).shape[0])
    h, w = next(iter(targets.values())).shape[-2:]
    cols = ["input"] + [f"{t} {k}" for t in tasks for k in ("target", "pred")]
    header = 14
    grid = Image.new("RGB", (w * len(cols), header + h * n), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * w + 3, 1), name, fill=(0, 0, 0))
    max_depth = float(targets["depth"].max()) if "depth" in targets else 10.0
    for r in range(n):
        first = _rgb(inputs["rgb"][r]) if "rgb" in inputs else colorize_depth(inputs["depth"][r, 0].cpu().numpy())
        panels = [first]
        for t in tasks:
            panels.append(_task_image(t, targets[t][r], False, max_depth))
            panels.append(_task_image(t, outputs[t][r], True, max_depth))
        for c, p in enumerate(panels):
            grid.paste(Image.fromarray(p), (c * w, header + r * h))
    path = Path(path)
    grid.save(path)
    return path
