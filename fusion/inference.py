"""Test-time inference as the official ANN code does it: sliding window, multi-scale and flip.

``methods/seg/fcn_segmentor_test.py`` of github.com/MendelXu/ANN (its ``ss_test``, ``ms_test`` and
``mscrop_test``), step by step:

* **scales**: the image is resized by each scale (bilinear); the prediction is resized back to the
  image's size (bicubic, ``cv2.INTER_CUBIC`` there) and added up over the scales;
* **flip**: with it, every scale runs a second time on the horizontally flipped image and its
  prediction, flipped back, is added too;
* **sliding window** (``window=(h, w)``): a resized image at least the window's size on both sides is
  cut into windows starting every ``int(window × stride_ratio)`` pixels (0.667 in the official
  configs), plus one flush with the far border when the last does not reach it
  (:func:`window_starts`); each window is predicted on its own, and the prediction of a pixel is the
  mean over the windows that hold it. A smaller image is predicted whole.

The official code sums the logits; here they are averaged over the scales and flips, which has the
same arg-max (and keeps a regression task's prediction in its units). Inputs other than ``rgb``
(``depth``) are resized with nearest-neighbour, so a missing (0) depth never blends into valid ones;
a flipped ``normals`` prediction has its x component negated after flipping back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``crop_stride_ratio`` of the official configs (hypes/seg/cityscapes/*.json).
OFFICIAL_STRIDE_RATIO = 0.667
#: ``scale_search`` of the official test configs, per dataset.
OFFICIAL_SCALES = {
    "cityscapes": (0.75, 1.0, 1.25),
    "ade20k": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    "pascal-context": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
}

Forward = Callable[[dict[str, Tensor]], Mapping[str, Tensor]]


def window_starts(length: int, window: int, stride_ratio: float = OFFICIAL_STRIDE_RATIO) -> list[int]:
    """Start offsets of the windows along one axis (the official ``_decide_intersection``); needs
    ``length >= window``."""
    if window < 1 or length < window:
        raise ValueError(f"window {window} must be >= 1 and at most the length {length}")
    stride = int(window * stride_ratio)
    if stride < 1:
        raise ValueError(f"stride_ratio {stride_ratio} gives a stride below one pixel for window {window}")
    starts = [stride * i for i in range((length - window) // stride + 1)]
    if length - starts[-1] > window:
        starts.append(length - window)  # the last window is flush with the far border
    return starts


def _at_size(outputs: Mapping[str, Tensor], tasks: Sequence[str], hw: tuple[int, int]) -> dict[str, Tensor]:
    out = {}
    for t in tasks:
        if t not in outputs:
            raise ValueError(f"the model's outputs have no task {t!r}; it gives {sorted(outputs)}")
        y = outputs[t].float()
        if tuple(y.shape[-2:]) != hw:
            y = F.interpolate(y, size=hw, mode="bilinear", align_corners=False)
        out[t] = y
    return out


def sliding_window(
    forward: Forward,
    inputs: Mapping[str, Tensor],
    tasks: Sequence[str],
    window: tuple[int, int],
    stride_ratio: float = OFFICIAL_STRIDE_RATIO,
) -> dict[str, Tensor]:
    """Predictions of ``tasks`` over the whole of ``inputs`` (B×C×H×W each), window by window; an
    input smaller than ``window`` on either side is predicted whole."""
    h, w = next(iter(inputs.values())).shape[-2:]
    wh, ww = window
    if h < wh or w < ww:
        return _at_size(forward(dict(inputs)), tasks, (h, w))
    total: dict[str, Tensor] = {}
    count = torch.zeros((h, w), device=next(iter(inputs.values())).device)
    for y in window_starts(h, wh, stride_ratio):
        for x in window_starts(w, ww, stride_ratio):
            crop = {k: v[..., y : y + wh, x : x + ww] for k, v in inputs.items()}
            pred = _at_size(forward(crop), tasks, (wh, ww))
            for t, p in pred.items():
                if t not in total:
                    total[t] = p.new_zeros((*p.shape[:-2], h, w))
                total[t][..., y : y + wh, x : x + ww] += p
            count[y : y + wh, x : x + ww] += 1
    return {t: v / count for t, v in total.items()}


def _resize_inputs(inputs: Mapping[str, Tensor], hw: tuple[int, int]) -> dict[str, Tensor]:
    out = {}
    for k, v in inputs.items():
        if k == "rgb":
            out[k] = F.interpolate(v, size=hw, mode="bilinear", align_corners=False)
        else:
            out[k] = F.interpolate(v, size=hw, mode="nearest")
    return out


def predict_tta(
    forward: Forward,
    inputs: Mapping[str, Tensor],
    tasks: Sequence[str],
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride_ratio: float = OFFICIAL_STRIDE_RATIO,
) -> dict[str, Tensor]:
    """The mean prediction of ``tasks`` over ``scales`` × (plain, flipped when ``flip``), each by
    :func:`sliding_window` when ``window`` is given, at the inputs' size. ``scales=(1.0,)``,
    ``flip=False`` and no window is exactly ``forward(inputs)``."""
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of numbers > 0, got {list(scales)}")
    h, w = next(iter(inputs.values())).shape[-2:]
    total: dict[str, Tensor] = {}
    n = 0
    for flipped in (False, True) if flip else (False,):
        for s in scales:
            x = {k: v.flip(-1) for k, v in inputs.items()} if flipped else dict(inputs)
            size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
            if size != (h, w):
                x = _resize_inputs(x, size)
            if window is None:
                pred = _at_size(forward(x), tasks, size)
            else:
                pred = sliding_window(forward, x, tasks, window, stride_ratio)
            for t, p in pred.items():
                if size != (h, w):
                    p = F.interpolate(p, size=(h, w), mode="bicubic", align_corners=False)
                if flipped:
                    p = p.flip(-1)
                    if t == "normals":
                        p = torch.cat([-p[:, :1], p[:, 1:]], dim=1)
                total[t] = total[t] + p if t in total else p
            n += 1
    return {t: v / n for t, v in total.items()}


class TestTimeAugmented(nn.Module):
    """``net`` whose forward is :func:`predict_tta` over ``tasks`` (evaluation only: no ``aux``)."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        net: nn.Module,
        tasks: Sequence[str],
        *,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window: tuple[int, int] | None = None,
        stride_ratio: float = OFFICIAL_STRIDE_RATIO,
    ) -> None:
        super().__init__()
        if window is not None and (len(window) != 2 or min(window) < 1):
            raise ValueError(f"window must be (height, width) >= 1, got {window!r}")
        if not 0 < stride_ratio <= 1:
            raise ValueError(f"stride_ratio must be in (0, 1], got {stride_ratio!r}")
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of numbers > 0, got {list(scales)}")
        self.net = net
        self.tasks = list(tasks)
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        self.window = tuple(window) if window is not None else None
        self.stride_ratio = float(stride_ratio)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return predict_tta(
            self.net,
            inputs,
            self.tasks,
            scales=self.scales,
            flip=self.flip,
            window=self.window,  # type: ignore[arg-type]
            stride_ratio=self.stride_ratio,
        )

    def settings(self) -> dict[str, object]:
        """What the evaluation used, for its report."""
        return {
            "scales": self.scales,
            "flip": self.flip,
            "window": list(self.window) if self.window else None,
            "stride_ratio": self.stride_ratio if self.window else None,
        }
