"""Non-local attention with sampled keys and values: the non-local block, APNB and AFNB.

Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV 2019
(arXiv:1908.07678), and Wang et al., "Non-local Neural Networks", CVPR 2018.

One attention implementation (:class:`AsymmetricAttention`) serves all three blocks; they differ
only in the *sampler* that picks the S key/value points out of the N = H·W positions (ANN §3.2):

- :class:`IdentitySampler` keeps every position (S = N): the plain non-local block, O(N²) memory;
- :class:`PyramidSampler` average-pools the keys and values to a few small grids and concatenates
  them (S = Σ n², 110 for the paper's sizes (1, 3, 6, 8)): O(N·S) memory.

:class:`PyramidPooledAttention` is APNB (§3.2): query and key share one projection, the attended
context is concatenated with the input and fused by a 1×1 conv. :class:`AsymmetricFusion` is AFNB
(§3.3): queries come from the high-level feature (stage 5), keys and values from the low-level
one (stage 4); the context is concatenated with the high-level feature and fused.
:func:`non_local_block` is APNB with the identity sampler.

Following the official code (github.com/MendelXu/ANN, ``models/seg/utils/{apnb,afnb}.py``):
key/query projections are 1×1 conv + BN + ReLU, the value projection a bare 1×1 conv, logits are
scaled by ``key_channels ** -0.5``, and the output projection W_o is zero-initialised, so at
initialisation the attention contributes exactly zero and a block reduces to its fusion conv
applied to ``cat(0, x)``. Deliberate differences: the projection convs feeding BN carry no bias
(BN's shift makes it redundant); the attention output always has the channels of the feature it
is concatenated with, so ``out_channels`` may differ from ``in_channels`` (the official APNB
silently requires them equal); the official multi-scale query option (``sizes=[1]``, unused in
the paper) is left out.

Memory: the 1×1 projections run as matrix products (:func:`conv1x1`) on the B×C×N view of the
feature, not through the convolution kernel, which on CPU first copies a 2048-channel input into
its blocked layout (a second copy of the input, and of the output, at peak); the context is formed
channel-first (V·Aᵀ, B×dv×N) so no transposed copy of it is made; and the full-resolution
projections are released before W_o allocates its output. At 2048×128×256 on CPU this halves
APNB's peak (docs/benchmarks.md); the results are those of the convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_PYRAMID_SIZES = (1, 3, 6, 8)


class IdentitySampler(nn.Module):
    """Samples every position: B×C×H×W -> B×C×(H·W). Gives the plain non-local block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)

    def num_samples(self, height: int, width: int) -> int:
        return height * width


class PyramidSampler(nn.Module):
    """ANN §3.2 pyramid sampling: adaptive average pooling to n×n for each n, flattened and
    concatenated, B×C×H×W -> B×C×S with S = Σ n² independent of H and W."""

    def __init__(self, sizes: Sequence[int] = PAPER_PYRAMID_SIZES):
        super().__init__()
        sizes = tuple(sizes)
        if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ValueError(f"PyramidSampler: sizes must be a non-empty list of positive ints, got {sizes!r}")
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in self.sizes], dim=2)

    def num_samples(self, height: int, width: int) -> int:
        return sum(s * s for s in self.sizes)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


def _conv_bn_relu_1x1(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1, stride-1, ungrouped ``conv``, computed as weight · x on the B×C×(H·W)
    view of ``x``: the same values, without the convolution kernel's layout copies of input and
    output (see the module docstring). Autograd and autocast treat it as the matmul it is."""
    b, c, h, w = x.shape
    if c != conv.in_channels:
        raise RuntimeError(f"conv1x1: input has {c} channels, the convolution expects {conv.in_channels}")
    weight = conv.weight.view(conv.out_channels, c)
    flat = x.flatten(2)
    if conv.bias is None:
        out = torch.matmul(weight, flat)
    else:
        out = torch.baddbmm(conv.bias.view(1, -1, 1), weight.expand(b, -1, -1), flat)
    return out.view(b, conv.out_channels, h, w)


def _conv_bn_relu(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A :func:`_conv_bn_relu_1x1` block with its conv run by :func:`conv1x1`."""
    conv, bn, relu = block
    return relu(bn(conv1x1(conv, x)))


def attention_weights(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d) over the sampled points: query B×N×d, key B×S×d -> B×N×S."""
    # Scale the logits in place: one B×N×S buffer instead of two (the scale's backward needs none).
    return torch.softmax(torch.bmm(query, key.transpose(1, 2)).mul_(query.shape[-1] ** -0.5), dim=-1)


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sampler: nn.Module, use_sdpa: bool = False
) -> torch.Tensor:
    """The attention part of a sampled non-local block, after the projections (ANN §3.1-3.2).

    ``query`` B×d×Hq×Wq, ``key`` B×d×H×W, ``value`` B×dv×H×W -> context B×dv×Hq×Wq. ``sampler``
    reduces keys and values to S points; ``use_sdpa`` routes the product through
    ``F.scaled_dot_product_attention`` (same scale 1/√d, same result, fused kernels where the
    backend has them) instead of materialising the B×N×S weights explicitly.
    """
    b, _, hq, wq = query.shape
    q = query.flatten(2).transpose(1, 2)
    k = sampler(key).transpose(1, 2)
    if use_sdpa:
        # CPU SDPA takes its fused (flash) kernel only for contiguous 4-D inputs; otherwise it falls
        # back to the math path, which materialises the B×N×S weights (measured at N = S = 9216:
        # 750 MB instead of 13 MB). Hence the head axis and the copies.
        v = sampler(value).transpose(1, 2)
        q, k, v = (t.unsqueeze(1).contiguous() for t in (q, k, v))
        context = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return context.transpose(1, 2).reshape(b, -1, hq, wq)
    # Channel-first context V·Aᵀ (B×dv×S · B×S×N): already in the B×dv×H×W layout, no copy.
    context = torch.bmm(sampler(value), attention_weights(q, k).transpose(1, 2))
    return context.view(b, -1, hq, wq)


class AsymmetricAttention(nn.Module):
    """Non-local attention whose keys and values are sampled (ANN §3.1-3.2).

    Q = θ(query_feats) and K = φ(key_feats) (1×1 conv + BN + ReLU), V = γ(key_feats) (1×1 conv);
    K and V are reduced to S points by ``sampler``; the context softmax(Q Kᵀ/√d) V is mapped back
    by the zero-initialised 1×1 conv W_o to ``out_channels``. ``share_key_query`` uses one
    projection for θ and φ (APNB; needs equal input channels).
    """

    def __init__(
        self,
        query_in_channels: int,
        key_in_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: int = 256,
        sampler: nn.Module | None = None,
        share_key_query: bool = False,
        use_sdpa: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("query_in_channels", query_in_channels),
            ("key_in_channels", key_in_channels),
            ("out_channels", out_channels),
            ("key_channels", key_channels),
            ("value_channels", value_channels),
        ):
            if value < 1:
                raise ValueError(f"AsymmetricAttention: {name} must be >= 1, got {value}")
        if share_key_query and query_in_channels != key_in_channels:
            raise ValueError(
                "AsymmetricAttention: share_key_query needs query_in_channels == key_in_channels, "
                f"got {query_in_channels} and {key_in_channels}"
            )
        self.share_key_query = share_key_query
        self.use_sdpa = use_sdpa
        self.sampler = sampler if sampler is not None else PyramidSampler()
        self.key_project = _conv_bn_relu_1x1(key_in_channels, key_channels)
        self.query_project = self.key_project if share_key_query else _conv_bn_relu_1x1(query_in_channels, key_channels)
        self.value_project = nn.Conv2d(key_in_channels, value_channels, 1)
        self.out_project = nn.Conv2d(value_channels, out_channels, 1)
        # Zero W_o (official code): the block starts as if attention were absent and learns to use it.
        nn.init.zeros_(self.out_project.weight)
        nn.init.zeros_(self.out_project.bias)

    def _project(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query = _conv_bn_relu(self.query_project, query_feats)
        # With a shared projection on the same tensor, φ(x) = θ(x): compute it once.
        key = query if self.share_key_query and key_feats is query_feats else _conv_bn_relu(self.key_project, key_feats)
        return query, key, conv1x1(self.value_project, key_feats)

    def attention_map(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        """The B×N×S attention weights (rows sum to 1), for inspection and tests."""
        query, key, _ = self._project(query_feats, key_feats)
        return attention_weights(query.flatten(2).transpose(1, 2), self.sampler(key).transpose(1, 2))

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        query, key, value = self._project(query_feats, key_feats)
        context = attend(query, key, value, self.sampler, self.use_sdpa)
        del query, key, value  # free the full-resolution projections before W_o allocates its output
        return conv1x1(self.out_project, context)


class PyramidPooledAttention(nn.Module):
    """APNB, Asymmetric Pyramid Non-local Block (ANN §3.2).

    out = Dropout(ReLU(BN(Conv1×1(cat(W_o(attention(x)), x))))), keys and values pooled by
    ``sampler`` (default: the paper's pyramid (1, 3, 6, 8), S = 110), query and key sharing one
    projection as in the official code. With :class:`IdentitySampler` this is the non-local
    block of Wang et al. in the concat form used by OCNet/ANN (see :func:`non_local_block`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: int = 256,
        sampler: nn.Module | None = None,
        dropout: float = 0.05,
        use_sdpa: bool = False,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PyramidPooledAttention: dropout must be in [0, 1), got {dropout}")
        self.attention = AsymmetricAttention(
            in_channels, in_channels, in_channels, key_channels, value_channels, sampler, True, use_sdpa
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.attention(x, x), x], dim=1))


def non_local_block(
    in_channels: int,
    out_channels: int,
    key_channels: int = 256,
    value_channels: int = 256,
    dropout: float = 0.05,
    use_sdpa: bool = False,
) -> PyramidPooledAttention:
    """Non-local block (Wang et al. 2018, embedded-Gaussian form, §3.2 there): every position is
    a key. Built as APNB with :class:`IdentitySampler`, i.e. the baseline that ANN compares
    against (OCNet's base block: shared key/query projection, concat fusion instead of the
    residual sum of Wang et al.), so the two differ only in how keys and values are sampled."""
    return PyramidPooledAttention(
        in_channels, out_channels, key_channels, value_channels, IdentitySampler(), dropout, use_sdpa
    )


class AsymmetricFusion(nn.Module):
    """AFNB, Asymmetric Fusion Non-local Block (ANN §3.3).

    Queries from ``high`` (stage 5), keys and values from ``low`` (stage 4), pyramid-sampled;
    out = Dropout(BN(Conv1×1(cat(W_o(attention), high)))). As in the official code the fusion
    has no ReLU (the next layer of the ANN head, a 3×3 conv-BN-ReLU, follows directly).
    ``high`` sets the output resolution; ``low`` may have any size since it is pooled.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: int = 256,
        sampler: nn.Module | None = None,
        dropout: float = 0.05,
        use_sdpa: bool = False,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AsymmetricFusion: dropout must be in [0, 1), got {dropout}")
        self.attention = AsymmetricAttention(
            high_channels, low_channels, out_channels, key_channels, value_channels, sampler, False, use_sdpa
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(out_channels + high_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.attention(high, low), high], dim=1))
