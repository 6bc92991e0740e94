"""Channel-Exchanging Network modules (Wang et al., "Deep Multimodal Fusion by Channel Exchanging", NeurIPS 2020).

Every module here maps a list of ``M`` modality tensors to a list of ``M`` tensors. Convolutions are
shared by all modalities (``ModuleParallel``) while BatchNorms are private (``BatchNorm2dParallel``),
and ``ChannelExchange`` implements the exchange rule of the method section (Fig. 2): in modality ``m``
a channel whose BN scale is small, ``|gamma_m,c| < threshold``, is replaced by the mean of the other
modalities at that channel (for two modalities: the other one's value). ``cen_l1`` is the paper's
ℓ1 sparsity term on the BN scales, over disjoint channel partitions (Fig. 2: "the sparsity
constraints on scaling factors are applied to disjoint regions of different modalities").

``CENBackbone`` turns a plain ResNet (``fusion.backbones``) into the shared-conv/private-BN encoder, so
ImageNet weights load exactly as for the unimodal network and every modality's BNs start from them
(the official ``expand_model_dict``). Where the code applies the exchange, following the official
``semantic_segmentation/models/model.py``: after the second BN of every residual block, before its
ReLU (the 3×3 conv's BN in a bottleneck); never in the stem or the shortcut. The official code uses
bottlenecks only; for basic blocks the second BN is the last one before the residual sum.
Differences from the official code: ``M`` modalities (the official ``Exchange`` handles two), and the
stem conv is shared too, so every input must have the stem's channel count; a 1-channel input
(depth) is replicated to 3 channels, as the official code feeds depth as a 3-channel image.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import Tensor, nn

from fusion.backbones import Backbone, ResNet
from fusion.backbones.resnet import BasicBlock, Bottleneck


class ModuleParallel(nn.Module):
    """One module (its weights shared by all modalities) applied to each tensor of the list."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    """A private ``BatchNorm2d`` per modality; ``from_bn`` copies one BN's state into every modality's."""

    def __init__(self, num_features: int, num_modalities: int):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(num_features) for _ in range(num_modalities))

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, num_modalities: int) -> BatchNorm2dParallel:
        out = cls(bn.num_features, num_modalities)
        out.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_modalities))
        return out

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) != len(self.bns):
            raise ValueError(f"BatchNorm2dParallel has {len(self.bns)} modalities, got {len(xs)} tensors")
        return [bn(x) for bn, x in zip(self.bns, xs, strict=True)]

    def gammas(self) -> list[Tensor]:
        return [bn.weight for bn in self.bns]


def channel_exchange(xs: list[Tensor], gammas: list[Tensor], threshold: float) -> list[Tensor]:
    """The exchange rule: channels with ``|gamma_m| < threshold`` take the mean of the other modalities' values.

    ``xs[m]`` is B×C×H×W, ``gammas[m]`` has C entries. A single modality is returned unchanged.
    """
    m_count = len(xs)
    if m_count < 2:
        return list(xs)
    out = []
    for m in range(m_count):
        # Summing the others explicitly (not total - xs[m]) keeps M=2 an exact copy.
        others = sum(xs[k] for k in range(m_count) if k != m) / (m_count - 1)
        small = (gammas[m].detach().abs() < threshold).view(1, -1, 1, 1)
        out.append(torch.where(small, others, xs[m]))
    return out


class ChannelExchange(nn.Module):
    def __init__(self, threshold: float = 2e-2):
        super().__init__()
        self.threshold = threshold

    def forward(self, xs: list[Tensor], bn: BatchNorm2dParallel) -> list[Tensor]:
        return channel_exchange(xs, bn.gammas(), self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def to_parallel(module: nn.Module, num_modalities: int) -> nn.Module:
    """Shared-weight, private-BN version of a conv/BN/activation stack, keeping child names.

    ``BatchNorm2d`` becomes ``BatchNorm2dParallel`` (copies of the original), ``Sequential`` is converted
    child by child, any other leaf (conv, ReLU, pooling) is wrapped in ``ModuleParallel`` and shared.
    """
    if isinstance(module, nn.BatchNorm2d):
        return BatchNorm2dParallel.from_bn(module, num_modalities)
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*[to_parallel(child, num_modalities) for child in module])
    if isinstance(module, (BasicBlock, Bottleneck, Backbone)) or any(
        isinstance(m, nn.BatchNorm2d) for m in module.children()
    ):
        raise TypeError(f"to_parallel: cannot convert {type(module).__name__}; use CENBlock/CENBackbone")
    return ModuleParallel(module)


class CENBlock(nn.Module):
    """A ResNet basic or bottleneck block over M modalities with the exchange after its second BN."""

    def __init__(self, block: BasicBlock | Bottleneck, num_modalities: int, threshold: float):
        super().__init__()
        self.bottleneck = isinstance(block, Bottleneck)
        names = ["conv1", "bn1", "conv2", "bn2", "relu"] + (["conv3", "bn3"] if self.bottleneck else [])
        for name in names:
            setattr(self, name, to_parallel(getattr(block, name), num_modalities))
        self.downsample = None if block.downsample is None else to_parallel(block.downsample, num_modalities)
        self.exchange = ChannelExchange(threshold)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        identity = xs if self.downsample is None else self.downsample(xs)
        out = self.relu(self.bn1(self.conv1(xs)))
        out = self.exchange(self.bn2(self.conv2(out)), self.bn2)
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu([o + i for o, i in zip(out, identity, strict=True)])


class CENBackbone(nn.Module):
    """A CEN encoder made from a plain ResNet: ``forward(xs)`` returns stages × modalities feature maps.

    ``channels``/``strides`` are the ResNet's. The ResNet's weights (e.g. loaded with ``pretrained``)
    are shared by every modality's convs and copied into every modality's BNs.
    """

    def __init__(self, resnet: ResNet, num_modalities: int, threshold: float = 2e-2):
        super().__init__()
        if not isinstance(resnet, ResNet):
            raise TypeError(f"CENBackbone needs a ResNet backbone (resnet18/34/50/101), got {type(resnet).__name__}")
        if num_modalities < 1:
            raise ValueError(f"CENBackbone: num_modalities must be >= 1, got {num_modalities}")
        self.num_modalities = num_modalities
        self.channels, self.strides = list(resnet.channels), list(resnet.strides)
        first_conv = resnet.conv1 if isinstance(resnet.conv1, nn.Conv2d) else resnet.conv1[0]
        self.in_channels = first_conv.in_channels
        self.conv1 = to_parallel(resnet.conv1, num_modalities)
        self.bn1 = to_parallel(resnet.bn1, num_modalities)
        self.relu = to_parallel(resnet.relu, num_modalities)
        self.maxpool = to_parallel(resnet.maxpool, num_modalities)
        for i in range(1, 5):
            layer = getattr(resnet, f"layer{i}")
            self.add_module(f"layer{i}", nn.Sequential(*[CENBlock(b, num_modalities, threshold) for b in layer]))

    def _check(self, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) != self.num_modalities:
            raise ValueError(f"CENBackbone was built for {self.num_modalities} modalities, got {len(xs)} tensors")
        out = []
        for m, x in enumerate(xs):
            if x.shape[1] == 1 and self.in_channels != 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            elif x.shape[1] != self.in_channels:
                raise ValueError(
                    f"CENBackbone input {m} has {x.shape[1]} channels; the shared stem takes "
                    f"{self.in_channels} (or 1, replicated)"
                )
            out.append(x)
        return out

    def forward(self, xs: list[Tensor]) -> list[list[Tensor]]:
        xs = self.maxpool(self.relu(self.bn1(self.conv1(self._check(xs)))))
        feats = []
        for i in range(1, 5):
            xs = getattr(self, f"layer{i}")(xs)
            feats.append(xs)
        return feats

    def exchange_bns(self) -> list[BatchNorm2dParallel]:
        """The BNs whose scales drive an exchange (and carry the L1 term)."""
        return [m.bn2 for m in self.modules() if isinstance(m, CENBlock)]

    @torch.no_grad()
    def exchanged_fractions(self) -> list[list[float]]:
        """``[modality][stage]``: the fraction of the stage's exchange channels (the second BN of each of its
        blocks) that modality ``m`` currently takes from the other modalities, ``|gamma_m| < threshold``.
        All zeros with one modality, which has nothing to exchange with."""
        out = [[0.0] * 4 for _ in range(self.num_modalities)]
        if self.num_modalities < 2:
            return out
        for stage in range(4):
            blocks = [b for b in getattr(self, f"layer{stage + 1}") if isinstance(b, CENBlock)]
            total = sum(b.bn2.bns[0].num_features for b in blocks)
            for m in range(self.num_modalities):
                small = sum(int((b.bn2.bns[m].weight.abs() < b.exchange.threshold).sum()) for b in blocks)
                out[m][stage] = small / total if total else 0.0
        return out


def exchange_diagnostics(backbone: CENBackbone, modalities: list[str]) -> dict[str, float]:
    """What a CEN encoder exchanges now, as metrics: ``cen/exchanged/<modality>/layer<i>`` (i = 1..4, the
    fraction of that stage's exchange channels the modality takes from the others, see
    ``CENBackbone.exchanged_fractions``) and ``cen/exchanged/<modality>``, the fraction over the whole
    encoder (stages weighted by their channel counts)."""
    if len(modalities) != backbone.num_modalities:
        raise ValueError(
            f"exchange_diagnostics: the encoder has {backbone.num_modalities} modalities, got {modalities}"
        )
    fractions = backbone.exchanged_fractions()
    sizes = [
        sum(b.bn2.bns[0].num_features for b in getattr(backbone, f"layer{i}") if isinstance(b, CENBlock))
        for i in range(1, 5)
    ]
    out: dict[str, float] = {}
    for name, per_stage in zip(modalities, fractions, strict=True):
        for i, f in enumerate(per_stage, start=1):
            out[f"cen/exchanged/{name}/layer{i}"] = f
        out[f"cen/exchanged/{name}"] = sum(f * n for f, n in zip(per_stage, sizes, strict=True)) / max(sum(sizes), 1)
    return out


def partition(num_channels: int, num_modalities: int, m: int) -> slice:
    """Channels of modality ``m``'s L1 region: ``[m*C//M, (m+1)*C//M)`` (M=2: the official halves)."""
    return slice(m * num_channels // num_modalities, (m + 1) * num_channels // num_modalities)


def cen_l1(bns: list[BatchNorm2dParallel]) -> Tensor:
    """The ℓ1 sparsity term: sum of ``|gamma_m|`` over modality ``m``'s partition of every exchange BN.

    Unweighted (callers multiply by ``l1_weight``); the partitions of one BN are disjoint and cover it.
    """
    terms = [
        bn.weight[partition(bn.num_features, len(p.bns), m)].abs().sum() for p in bns for m, bn in enumerate(p.bns)
    ]
    if not terms:
        raise ValueError("cen_l1: no exchange BatchNorms given")
    return torch.stack(terms).sum()


_PARALLEL_SEGMENT = re.compile(r"\.module(?=\.)|\.bns\.\d+(?=\.)")


def plain_key(cen_key: str) -> str:
    """The unimodal parameter name of a CEN parameter (``layer1.0.bn2.bns.1.weight`` -> ``layer1.0.bn2.weight``)."""
    return _PARALLEL_SEGMENT.sub("", cen_key)
