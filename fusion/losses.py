"""Per-task dense-prediction losses and the weighted multi-task loss.

The per-task losses follow the official MTI-Net / PAD-Net code (Vandenhende et al., ECCV 2020,
``losses/loss_functions.py``), with these deliberate differences:

- invalid pixels are given by the shard format (depth ``0``, normals ``(0, 0, 0)``, class ``255``)
  instead of the official ``255`` marker for depth and normals;
- every loss returns ``0`` (with a gradient path) on a batch without a valid pixel instead of NaN,
  so a rare all-invalid crop cannot poison a training run;
- OHEM cross-entropy (Wu et al. 2016, "Bridging category-level and instance-level semantic image
  segmentation"; the PSPNet/HRNet-seg variant) is offered for ``semseg``; the official MTL code
  has none.

Targets (docs/data-format.md, docs/models.md): ``semseg``/``parts`` LongTensor B×H×W (255 = ignore),
``depth`` B×1×H×W metres (0 = invalid), ``normals`` B×3×H×W (0 = invalid), ``edge``/``sal``
B×1×H×W float in {0, 1}. Predictions are raw network outputs (logits for classification tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.tasks import TASK_REGISTRY, TASKS

IGNORE_INDEX = 255
EDGE_POS_WEIGHT = 0.95


def _class_target(target: Tensor) -> Tensor:
    """Accept B×H×W or B×1×H×W class maps."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long()


def _masked_mean(per_element: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``per_element`` over the ``valid`` elements; 0 when none is, still with a gradient path
    (zero gradients), so backward() works on an all-invalid batch.

    Masking instead of boolean indexing keeps the host out of it: ``x[valid]`` and ``int(count)`` wait
    for the GPU (a device-to-host sync per call, 14 per training step of the NYUD MTI-Net set-up), and
    indexing's backward is a scatter. A masked-out element contributes an exact 0, even where its
    value is not finite.
    """
    total = torch.where(valid, per_element, per_element.new_zeros(())).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)


def cross_entropy(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel-wise softmax cross-entropy averaged over non-ignored pixels (official ``SoftMaxwithLoss``)."""
    target = _class_target(target)
    valid = target != ignore_index
    per_pixel = F.cross_entropy(pred, target.masked_fill(~valid, 0), reduction="none")
    return _masked_mean(per_pixel, valid)


def ohem_cross_entropy(
    pred: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Online hard example mining: cross-entropy over the pixels whose target-class probability is
    below ``thresh``; when fewer than ``min_kept`` are that hard, the ``min_kept`` hardest are kept.

    Keeping ``prob <= max(thresh, p_(min_kept))`` (the ``min_kept``-th smallest probability) is the
    PSPNet/HRNet rule; ``<=`` rather than ``<`` guarantees at least ``min_kept`` pixels.
    """
    target = _class_target(target)
    valid = target != ignore_index
    per_pixel = F.cross_entropy(pred, target.masked_fill(~valid, 0), reduction="none")[valid]
    if per_pixel.numel() == 0:
        return pred.sum() * 0.0
    prob = torch.exp(-per_pixel.detach())
    threshold = torch.tensor(thresh, dtype=prob.dtype, device=prob.device)
    if min_kept > 0:
        kth = torch.sort(prob).values[min(min_kept, prob.numel()) - 1]
        threshold = torch.maximum(threshold, kth)
    keep = prob <= threshold
    return per_pixel[keep].sum() / keep.sum()


def depth_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over pixels with a valid ground-truth depth (``target > 0``)."""
    valid = target > 0
    return _masked_mean((pred - target).abs(), valid)


def normals_l1(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between the L2-normalised prediction and the target over valid pixels.

    As the official ``NormalsLoss(normalize=True)``, the sum is divided by the number of valid
    *elements* (3 per valid pixel). A pixel is valid when its target vector is non-zero.
    """
    valid = (target != 0).any(dim=1, keepdim=True).expand_as(target)
    unit = pred / (torch.linalg.vector_norm(pred, dim=1, keepdim=True) + 1e-12)
    return _masked_mean((unit - target).abs(), valid)


def balanced_bce(pred: Tensor, target: Tensor, pos_weight: float | None = None) -> Tensor:
    """Class-balanced binary cross-entropy on logits (HED, Xie & Tu 2015, eq. 2).

    Matches the official ``BalancedCrossEntropyLoss(size_average=True)``:
    ``(w * sum_{pos} bce + (1 - w) * sum_{neg} bce) / numel`` with ``w = pos_weight`` or, when
    ``pos_weight`` is None, ``w = #neg / #pixels`` computed on the batch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"balanced_bce: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    labels = (target >= 0.5).to(pred.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(pred, labels, reduction="none")
    loss_pos = (per_pixel * labels).sum()
    loss_neg = (per_pixel * (1.0 - labels)).sum()
    w = (1.0 - labels).sum() / labels.numel() if pos_weight is None else pos_weight
    return (w * loss_pos + (1.0 - w) * loss_neg) / labels.numel()


def task_loss_fn(
    task: str,
    ohem: bool = False,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100_000,
    edge_pos_weight: float = EDGE_POS_WEIGHT,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of ``task`` from the task dict (``fusion.tasks``): the official code's, for the
    built-in tasks (edge: pos_weight 0.95; sal: batch-balanced)."""
    if task in TASK_REGISTRY:
        return TASK_REGISTRY[task].loss(
            ohem=ohem, ohem_thresh=ohem_thresh, ohem_min_kept=ohem_min_kept, edge_pos_weight=edge_pos_weight
        )
    raise ValueError(f"loss: unknown task {task!r} (known: {', '.join(TASKS)})")


def _resize_to(pred: Tensor, target: Tensor) -> Tensor:
    size = target.shape[-2:]
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


#: How ``aux_resolution="prediction"`` brings each built-in task's target down to an aux prediction's size:
#: ``nearest`` (class maps: the block's centre pixel, 255 stays ignore), ``valid_mean`` (the mean of the
#: block's valid pixels, invalid where it has none: depth's 0), ``valid_mean_unit`` (the same, renormalised:
#: normals), ``mean`` (saliency). A task without a rule keeps the official upsampling of the prediction:
#: a plugin's, and ``edge``, whose one-pixel edges have no faithful low-resolution target (``any``, a max
#: pool, keeps them but multiplies the positive share and so the class-balanced loss: 0.8-3× the official
#: value in benchmarks/deep_supervision.py).
AUX_TARGET_POOL: dict[str, str] = {
    "semseg": "nearest",
    "parts": "nearest",
    "depth": "valid_mean",
    "normals": "valid_mean_unit",
    "sal": "mean",
}


def downsample_target(target: Tensor, size: tuple[int, int], rule: str) -> Tensor:
    """``target`` (B×H×W class ids, or B×C×H×W) at ``size``, by one of the :data:`AUX_TARGET_POOL` rules.

    Area rules average over each output pixel's footprint (``F.interpolate(mode="area")``, exact for
    any size, integer factors or not); ``nearest`` takes the pixel nearest the footprint's centre."""
    if rule == "nearest":
        t = target if target.dim() == 4 else target.unsqueeze(1)
        out = F.interpolate(t.float(), size=size, mode="nearest-exact").to(target.dtype)
        return out if target.dim() == 4 else out[:, 0]
    if rule == "mean":
        return F.interpolate(target, size=size, mode="area")
    if rule == "any":
        return F.adaptive_max_pool2d(target, size)
    if rule in ("valid_mean", "valid_mean_unit"):
        valid = (target != 0).any(dim=1, keepdim=True).to(target.dtype)
        total = F.interpolate(target * valid, size=size, mode="area")
        count = F.interpolate(valid, size=size, mode="area")
        out = torch.where(count > 0, total / count.clamp(min=torch.finfo(target.dtype).tiny), 0.0)
        if rule == "valid_mean_unit":
            norm = torch.linalg.vector_norm(out, dim=1, keepdim=True)
            out = torch.where(norm > 0, out / norm.clamp(min=torch.finfo(target.dtype).tiny), 0.0)
        return out
    raise ValueError(
        f"downsample_target: unknown rule {rule!r} (known: {', '.join(sorted(set(AUX_TARGET_POOL.values())))})"
    )


class MultiTaskLoss(nn.Module):
    """Weighted sum of final task losses, deep-supervision (aux) losses and regularisation terms.

    ``total = sum_t w_t L_t(out_t) + sum_{aux a} alpha_a sum_t w_t L_t(up(aux_a,t)) + sum_r R_r``
    where ``alpha_a = model.aux_weights.get(a, 1.0)`` and ``R_r`` come from
    ``model.regularization()``. This generalises the official ``PADNetLoss``/``MTINetLoss``
    (which weight each deep-supervision term by the task weight, alpha = 1). Aux predictions are
    bilinearly upsampled to the target size, as there. Aux predictions of auxiliary tasks (e.g. an
    MTI-Net that predicts ``edge`` only at its front end) need a target and use weight
    ``weights.get(task, 1.0)``.

    ``aux_resolution="prediction"`` computes each aux loss at its prediction's (lower) resolution
    instead, on the target brought down by the task's :data:`AUX_TARGET_POOL` rule (once per task and
    size per call): the same losses on 1/s² of the pixels at an aux scale of 1/s, not numerically equal
    to the official ones (benchmarks/deep_supervision.py measures the difference). The final outputs
    are always scored at the target's resolution.
    """

    def __init__(
        self,
        tasks: list[str],
        weights: Mapping[str, float] | None = None,
        deep_supervision: bool = True,
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
        edge_pos_weight: float = EDGE_POS_WEIGHT,
        aux_resolution: str = "target",
    ) -> None:
        super().__init__()
        if aux_resolution not in ("target", "prediction"):
            raise ValueError(f"MultiTaskLoss: aux_resolution must be 'target' or 'prediction', got {aux_resolution!r}")
        self.aux_resolution = aux_resolution
        weights = dict(weights or {})
        unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(
                f"MultiTaskLoss: unknown task(s) {', '.join(map(repr, unknown))} (known: {', '.join(TASKS)})"
            )
        self.tasks = list(tasks)
        self.weights = {t: float(weights.get(t, 1.0)) for t in TASKS}
        self.deep_supervision = deep_supervision
        self._fns = {
            t: task_loss_fn(
                t, ohem=ohem, ohem_thresh=ohem_thresh, ohem_min_kept=ohem_min_kept, edge_pos_weight=edge_pos_weight
            )
            for t in TASKS
        }
        # OHEM selects hard pixels of the final prediction only; aux heads keep the plain loss, as ANN's
        # official FSAuxOhemCELoss (OHEM cross-entropy on the output, plain cross-entropy on the dsn head).
        self._aux_fns = self._fns if not ohem else {t: task_loss_fn(t, edge_pos_weight=edge_pos_weight) for t in TASKS}

    def _term(
        self,
        task: str,
        pred: Tensor,
        targets: Mapping[str, Tensor],
        where: str,
        aux: bool = False,
        pooled: dict[tuple[str, tuple[int, int]], Tensor] | None = None,
    ) -> Tensor:
        if task not in targets:
            raise KeyError(f"MultiTaskLoss: targets have no {task!r} (needed by {where}); targets: {sorted(targets)}")
        target = targets[task]
        size = (int(pred.shape[-2]), int(pred.shape[-1]))
        th, tw = target.shape[-2:]
        if (
            aux
            and pooled is not None
            and task in AUX_TARGET_POOL
            and size[0] <= th
            and size[1] <= tw
            and size != (th, tw)
        ):
            if (task, size) not in pooled:
                pooled[(task, size)] = downsample_target(target, size, AUX_TARGET_POOL[task])
            return self._aux_fns[task](pred, pooled[(task, size)])
        return (self._aux_fns if aux else self._fns)[task](_resize_to(pred, target), target)

    def forward(
        self, outputs: Mapping[str, Any], targets: Mapping[str, Tensor], model: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # A DistributedDataParallel wrapper hides the model's attributes behind ``.module``.
        inner = getattr(model, "module", model)
        components: dict[str, Tensor] = {}
        terms: list[Tensor] = []
        for t in self.tasks:
            if t not in outputs:
                raise KeyError(f"MultiTaskLoss: model outputs have no {t!r}; outputs: {sorted(outputs)}")
            loss = self._term(t, outputs[t], targets, "the final output")
            components[t] = loss.detach()
            terms.append(self.weights[t] * loss)
        if self.deep_supervision:
            aux_weights = dict(getattr(inner, "aux_weights", {}) or {})
            pooled: dict[tuple[str, tuple[int, int]], Tensor] | None = (
                {} if self.aux_resolution == "prediction" else None
            )
            for name, preds in (outputs.get("aux") or {}).items():
                alpha = float(aux_weights.get(name, 1.0))
                for t, pred in preds.items():
                    loss = self._term(t, pred, targets, f"aux {name!r}", aux=True, pooled=pooled)
                    components[f"{name}/{t}"] = loss.detach()
                    terms.append(alpha * self.weights[t] * loss)
        if inner is not None and hasattr(inner, "regularization"):
            for name, value in inner.regularization().items():
                components[f"reg/{name}"] = value.detach()
                terms.append(value)
        total = torch.stack(terms).sum() if terms else torch.zeros(())
        components["total"] = total.detach()
        return total, components
