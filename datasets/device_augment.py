"""The geometric augmentation of :mod:`datasets.transforms`, applied to a whole batch on its device.

With ``data.augment_on: device`` the loader workers only decode: :class:`datasets.transforms.WarpSampler`
draws each sample's warp (the very matrix :class:`~datasets.transforms.SampleTransform` draws for the same
seed) and the loader hands the tensors over unresampled, with ``batch["warp"]`` (B×3×3, input -> output
pixels) and ``batch["warp_size"]`` (B×2). :func:`warp_batch` then resamples every map of the batch in a
few batched tensor ops (``grid_sample`` for rgb, a gather for the rest), with the CPU path's semantics
(docs/augmentation.md):

- the ``rgb`` input: bilinear, with the same area pre-shrink when the warp shrinks an axis (an exact
  area resize, the overlap-weighted box filter of ``cv2.INTER_AREA``, as two matrix products), padded
  with the normalised value of ``rgb_pad``;
- every other map (depth, labels, normals, edge, ...): nearest, so every value is an input value or the
  padding: 255 for ``labels`` members, 0 for the rest; missing depth (0) is never blended into valid depth;
- normals: corrected for the warp's linear part as :func:`datasets.transforms.correct_normals` does
  (unchanged, bit for bit, under a warp without anisotropic stretch).

Where the two paths can differ, and why (tests/datasets/test_device_augment.py measures it): a
nearest-resampled pixel whose source point lies exactly between two input pixels (up to float rounding;
zooms by simple ratios put whole rows there) has two nearest pixels, and OpenCV's arithmetic and this
module's float64 arithmetic may pick different ones. ``rgb``: OpenCV rounds to uint8 after the area
shrink and after the warp and quantises bilinear weights to 1/32 pixel, while this module stays in
float32: a difference of about one level of 255 at most.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.codec import MEMBERS
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_matrix


class DeviceAugmentError(ValueError):
    """A batch the device augmentation cannot warp; the message names the field at fault."""


def _normalise(h: int, w: int) -> np.ndarray:
    """Pixel coordinates (OpenCV centres) -> grid_sample's [-1, 1] coordinates, align_corners=False."""
    return np.array([[2.0 / w, 0, 1.0 / w - 1], [0, 2.0 / h, 1.0 / h - 1], [0, 0, 1]])


def _theta(m: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """affine_grid's 2×3 theta: output normalised coordinates -> input normalised coordinates."""
    t = _normalise(*in_hw) @ np.linalg.inv(m) @ np.linalg.inv(_normalise(*out_hw))
    return t[:2]


def _area_weights(n_out: int, n_in: int) -> np.ndarray:
    """The n_out×n_in matrix of an area (box-filter) shrink: output pixel i averages input [i·s, (i+1)·s)
    with s = n_in / n_out, each input pixel weighted by its overlap (``cv2.INTER_AREA`` when shrinking)."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            w[i, j] = max(0.0, min(hi, j + 1) - max(lo, j)) / scale
    return w


def _check(batch_warp: Tensor, batch_size: Tensor, n: int) -> tuple[np.ndarray, tuple[int, int]]:
    if not isinstance(batch_warp, Tensor) or tuple(batch_warp.shape) != (n, 3, 3):
        got = tuple(batch_warp.shape) if isinstance(batch_warp, Tensor) else type(batch_warp).__name__
        raise DeviceAugmentError(f"batch['warp'] must be a {n}×3×3 tensor (one matrix per sample), got {got}")
    if not isinstance(batch_size, Tensor) or tuple(batch_size.shape) != (n, 2):
        got = tuple(batch_size.shape) if isinstance(batch_size, Tensor) else type(batch_size).__name__
        raise DeviceAugmentError(f"batch['warp_size'] must be a {n}×2 tensor, got {got}")
    mats = batch_warp.detach().cpu().double().numpy()  # the loader's tensors: on the host, no device sync
    sizes = {tuple(int(v) for v in row) for row in batch_size.detach().cpu().tolist()}
    if len(sizes) != 1:
        raise DeviceAugmentError(
            f"batch['warp_size']: the samples of a batch warp to different sizes {sorted(sizes)}; "
            "set data.augment.crop or data.augment.resize"
        )
    (size,) = sizes
    if not np.isfinite(mats).all() or np.any(np.abs(np.linalg.det(mats[:, :2, :2])) < 1e-12):
        raise DeviceAugmentError("batch['warp']: a matrix is singular or not finite")
    return mats, size  # type: ignore[return-value]


def _source_index(
    mats: np.ndarray, in_hw: tuple[int, int], size: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per output pixel, the flat index of the input pixel nearest its source point (B×H×W) and whether
    that pixel exists. Rounds half up, ``floor(x + 0.5)``, as OpenCV's nearest warp; float64 coordinates,
    so exact ties (zooms by simple ratios put many pixels on them) break the same way on both paths."""
    h, w = size
    inv = torch.from_numpy(np.linalg.inv(mats)[:, :2]).to(device, torch.float64, non_blocking=True)
    ys = torch.arange(h, device=device, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float64).view(1, 1, w)
    sx = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    ix, iy = torch.floor(sx + 0.5).long(), torch.floor(sy + 0.5).long()
    inside = (ix >= 0) & (ix < in_hw[1]) & (iy >= 0) & (iy < in_hw[0])
    return torch.where(inside, iy * in_hw[1] + ix, 0), inside


def _nearest(x: Tensor, index: tuple[Tensor, Tensor], pad: float) -> Tensor:
    """B×C×h×w -> B×C×H×W: each output pixel the input pixel at ``index``, or ``pad`` outside the input."""
    flat, inside = index
    b, c = x.shape[:2]
    picked = torch.gather(x.reshape(b, c, -1), 2, flat.view(b, 1, -1).expand(b, c, -1)).view(b, c, *flat.shape[1:])
    return torch.where(inside.unsqueeze(1), picked, torch.as_tensor(pad, dtype=x.dtype, device=x.device))


def _warp_rgb(x: Tensor, mats: np.ndarray, size: tuple[int, int], pad: Tensor) -> Tensor:
    """Bilinear; an axis the warp shrinks is area-resized first (per sample, as the CPU path)."""
    b, _, h, w = x.shape
    shrunk: list[tuple[int, int]] = []
    ms = []
    for m in mats:
        lin = m[:2, :2]
        ax, ay = min(1.0, float(np.linalg.norm(lin[:, 0]))), min(1.0, float(np.linalg.norm(lin[:, 1])))
        nh, nw = (max(1, round(h * ay)), max(1, round(w * ax))) if ax < 1.0 or ay < 1.0 else (h, w)
        shrunk.append((nh, nw))
        ms.append(m @ np.linalg.inv(resize_matrix(h, w, nh, nw)) if (nh, nw) != (h, w) else m)
    x = x - pad
    if any(s != (h, w) for s in shrunk):
        # Samples shrink to different sizes: each is area-resized into the top-left of one zero
        # (= padding) canvas of the largest size; the canvas' zeros beyond a sample read as outside it.
        hh, ww = max(s[0] for s in shrunk), max(s[1] for s in shrunk)
        wy, wx = np.zeros((b, hh, h)), np.zeros((b, ww, w))
        for i, (nh, nw) in enumerate(shrunk):
            wy[i, :nh] = _area_weights(nh, h)
            wx[i, :nw] = _area_weights(nw, w)
        wy_t = torch.from_numpy(wy).to(x.device, torch.float32, non_blocking=True)
        wx_t = torch.from_numpy(wx).to(x.device, torch.float32, non_blocking=True)
        x = torch.einsum("bih,bchw,bjw->bcij", wy_t, x, wx_t)
        thetas = np.stack([_normalise(hh, ww) @ np.linalg.inv(m) @ np.linalg.inv(_normalise(*size)) for m in ms])
        thetas = thetas[:, :2]
    else:
        thetas = np.stack([_theta(m, (h, w), size) for m in ms])
    grid = F.affine_grid(
        torch.from_numpy(thetas).to(x.device, torch.float32, non_blocking=True), [b, 1, *size], align_corners=False
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad


def _normal_maps(mats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the 3×3 map of row-vector normals (inverse of the lifted warp) and whether the
    warp leaves normals alone (no anisotropic stretch), as :func:`datasets.transforms.correct_normals`."""
    inv, keep = [], []
    for m in mats:
        lift = np.eye(3)
        lift[:2, :2] = m[:2, :2]
        lift[2, 2] = np.sqrt(abs(np.linalg.det(m[:2, :2])))
        iso = bool(np.allclose(lift / lift[2, 2], np.eye(3), rtol=0, atol=1e-12))
        keep.append(iso)
        inv.append(np.eye(3) if iso else np.linalg.inv(lift))
    return np.stack(inv), np.array(keep)


def warp_batch(
    inputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    warp: Tensor,
    warp_size: Tensor,
    rgb_pad: str = "zero",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``inputs`` and ``targets`` (as the loader batches them: rgb normalised with ``mean``/``std``, depth
    in metres, targets by their member's kind) resampled by each sample's warp, on their device.

    ``warp`` (B×3×3) and ``warp_size`` (B×2) are the loader's ``batch["warp"]`` and ``batch["warp_size"]``
    (host tensors: reading them costs no device sync). Raises :class:`DeviceAugmentError` naming the field
    when they do not fit the batch.
    """
    n = next(iter(inputs.values())).shape[0]
    mats, size = _check(warp, warp_size, n)
    if rgb_pad not in ("zero", "mean"):
        raise DeviceAugmentError(f"rgb_pad must be 'zero' or 'mean', got {rgb_pad!r}")
    out_in: dict[str, Tensor] = {}
    out_t: dict[str, Tensor] = {}
    index: tuple[Tensor, Tensor] | None = None

    def nearest_index(x: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal index
        if index is None:  # every map of a sample has the same size: one index for all of them
            index = _source_index(mats, (x.shape[-2], x.shape[-1]), size, x.device)
        return index

    for key, x in inputs.items():
        if key == "rgb":
            m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            pad = -m / s if rgb_pad == "zero" else torch.zeros_like(m)
            out_in[key] = _warp_rgb(x, mats, size, pad)
        else:  # depth: nearest, 0 = missing
            out_in[key] = _nearest(x, nearest_index(x), 0.0)
    for key, y in targets.items():
        kind = MEMBERS[key].kind if key in MEMBERS else None
        if kind is None:
            raise DeviceAugmentError(f"target {key!r} is no registered member; known: {', '.join(MEMBERS)}")
        if kind == "labels":
            pad = float(MEMBERS[key].pad)  # type: ignore[arg-type]
            moved = _nearest(y.unsqueeze(1), nearest_index(y), pad)
            out_t[key] = moved.squeeze(1)
        elif kind == "normals":
            moved = _nearest(y, nearest_index(y), 0.0)
            inv, keep = _normal_maps(mats)
            inv_t = torch.from_numpy(inv).to(y.device, y.dtype, non_blocking=True)
            keep_t = torch.from_numpy(keep).to(y.device, non_blocking=True).view(-1, 1, 1, 1)
            turned = torch.einsum("bchw,bcd->bdhw", moved, inv_t)
            norm = torch.linalg.vector_norm(turned, dim=1, keepdim=True)
            turned = torch.where(norm > 0, turned / norm.clamp(min=torch.finfo(y.dtype).tiny), 0.0)
            out_t[key] = torch.where(keep_t, moved, turned)
        else:  # scalar16 (depth), binary, gray, rgb-kind targets: nearest, padded with 0
            out_t[key] = _nearest(y, nearest_index(y), 0.0)
    return out_in, out_t
