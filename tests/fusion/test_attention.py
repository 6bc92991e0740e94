import pytest
import torch
from torch import nn

from fusion.attention import (
    AsymmetricAttention,
    AsymmetricFusion,
    IdentitySampler,
    PyramidPooledAttention,
    PyramidSampler,
    attend,
    attention_weights,
    conv1x1,
    non_local_block,
)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter and BN statistic a random value, W_o included (it starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_the_convolution_values_and_gradients(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1, bias=bias)
    x = torch.randn(3, 6, 4, 7, requires_grad=True)
    ref = conv(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    out = conv1x1(conv, x)
    grads = torch.autograd.grad(out.square().sum(), [x, *conv.parameters()])
    assert out.shape == (3, 5, 4, 7)
    assert torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-4)


def test_conv1x1_names_a_channel_mismatch():
    with pytest.raises(RuntimeError, match="conv1x1: input has 4 channels, the convolution expects 6"):
        conv1x1(nn.Conv2d(6, 5, 1), torch.randn(1, 4, 2, 2))


def _reference_attention(att: AsymmetricAttention, query_feats, key_feats):
    """The block written with the modules' own convolutions and the textbook B×N×S layout."""
    q = att.query_project(query_feats).flatten(2).transpose(1, 2)
    k = att.sampler(att.key_project(key_feats)).transpose(1, 2)
    v = att.sampler(att.value_project(key_feats)).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
    b, _, h, wd = query_feats.shape
    return att.out_project((w @ v).transpose(1, 2).reshape(b, -1, h, wd))


@pytest.mark.parametrize("sampler", [PyramidSampler(), IdentitySampler()])
def test_attention_equals_the_textbook_computation_in_train_and_eval(sampler):
    torch.manual_seed(0)
    att = AsymmetricAttention(12, 9, 10, key_channels=8, value_channels=6, sampler=sampler)
    _randomise(att)
    qf, kf = torch.randn(2, 12, 9, 11, requires_grad=True), torch.randn(2, 9, 9, 11, requires_grad=True)
    for train in (False, True):
        att.train(train)
        out = att(qf, kf)
        ref = _reference_attention(att, qf, kf)
        assert out.abs().max() > 1e-2
        assert torch.allclose(out, ref, atol=1e-5)
    # Gradients flow through the in-place logit scaling exactly as through the reference.
    g = torch.autograd.grad(att(qf, kf).sum(), [qf, kf, att.query_project[0].weight])
    r = torch.autograd.grad(_reference_attention(att, qf, kf).sum(), [qf, kf, att.query_project[0].weight])
    for a, b in zip(g, r, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_pyramid_sampler_hand_made_values():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = PyramidSampler((1, 2))(x)
    # 1×1: mean of 0..15; 2×2: means of the four 2×2 quadrants, row-major.
    assert torch.equal(out, torch.tensor([[[7.5, 2.5, 4.5, 10.5, 12.5]]]))


def test_pyramid_sampler_paper_sizes_give_110_points():
    sampler = PyramidSampler()
    assert sampler.sizes == (1, 3, 6, 8)
    assert sampler.num_samples(33, 65) == 110
    assert sampler(torch.randn(2, 5, 33, 65)).shape == (2, 5, 110)


def test_identity_sampler_keeps_every_position_in_order():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(IdentitySampler()(x), x.reshape(2, 3, 20))
    assert IdentitySampler().num_samples(4, 5) == 20


@pytest.mark.parametrize("sizes", [(), (0, 3), (2.0,), (True,)])
def test_pyramid_sampler_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="PyramidSampler: sizes"):
        PyramidSampler(sizes)


def test_attention_weights_hand_made():
    q = torch.tensor([[[2.0, 0.0]]])  # d = 2, scale 1/sqrt(2)
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    w = attention_weights(q, k)
    logits = torch.tensor([2.0 / 2**0.5, 0.0])
    assert torch.allclose(w[0, 0], torch.softmax(logits, 0))


def test_apnb_equals_non_local_when_pyramid_samples_every_position():
    torch.manual_seed(0)
    apnb = PyramidPooledAttention(16, 12, key_channels=8, value_channels=6, sampler=PyramidSampler((8,)))
    nl = non_local_block(16, 12, key_channels=8, value_channels=6)
    _randomise(apnb)
    nl.load_state_dict(apnb.state_dict())
    apnb.eval(), nl.eval()
    x = torch.randn(2, 16, 8, 8)
    out_apnb, out_nl = apnb(x), nl(x)
    assert torch.allclose(out_apnb, out_nl, atol=1e-5)
    # The attention term is live (W_o randomised), so the equality is not that of two zeros.
    assert apnb.attention(x, x).abs().max() > 1e-2
    # And the pyramid differs from the full block once it pools: the check can fail.
    coarse = PyramidPooledAttention(16, 12, key_channels=8, value_channels=6, sampler=PyramidSampler((4,)))
    coarse.load_state_dict(apnb.state_dict())
    assert not torch.allclose(coarse.eval()(x), out_nl, atol=1e-3)


def test_zero_initialised_output_projection_contributes_nothing():
    torch.manual_seed(0)
    apnb = PyramidPooledAttention(8, 8, key_channels=4, value_channels=4).eval()
    x = torch.randn(1, 8, 6, 6)
    assert torch.equal(apnb.attention(x, x), torch.zeros(1, 8, 6, 6))
    # So the block is its fusion conv applied to cat(0, x).
    expected = apnb.fuse(torch.cat([torch.zeros_like(x), x], 1))
    assert torch.equal(apnb(x), expected)


@pytest.mark.parametrize("sampler", [PyramidSampler(), IdentitySampler()])
def test_sdpa_path_equals_explicit_path(sampler):
    torch.manual_seed(0)
    explicit = AsymmetricAttention(12, 12, 10, key_channels=8, value_channels=6, sampler=sampler, share_key_query=True)
    _randomise(explicit)
    fused = AsymmetricAttention(
        12, 12, 10, key_channels=8, value_channels=6, sampler=sampler, share_key_query=True, use_sdpa=True
    )
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(2, 12, 9, 11)
    explicit.eval(), fused.eval()
    a, b = explicit(x, x), fused(x, x)
    assert a.abs().max() > 1e-2
    assert torch.allclose(a, b, atol=1e-5)


def test_attend_with_uniform_keys_averages_the_values():
    # Identical keys everywhere -> uniform weights -> every query gets the mean of the values.
    query = torch.randn(1, 4, 3, 3)
    key = torch.ones(1, 4, 3, 3)
    value = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = attend(query, key, value, IdentitySampler())
    assert torch.allclose(out, torch.full((1, 1, 3, 3), 4.0))


def test_attention_weights_sum_to_one_over_sampled_points():
    torch.manual_seed(0)
    att = AsymmetricAttention(6, 5, 4, key_channels=3, value_channels=2).eval()
    _randomise(att)
    w = att.attention_map(torch.randn(2, 6, 7, 9), torch.randn(2, 5, 10, 10))
    assert w.shape == (2, 63, 110)
    assert torch.allclose(w.sum(-1), torch.ones(2, 63), atol=1e-6)
    assert (w >= 0).all()


def test_afnb_queries_from_high_keys_values_from_low():
    torch.manual_seed(0)
    afnb = AsymmetricFusion(low_channels=6, high_channels=10, out_channels=7, key_channels=4, value_channels=3)
    assert afnb.attention.query_project[0].in_channels == 10
    assert afnb.attention.key_project[0].in_channels == 6
    assert afnb.attention.value_project.in_channels == 6
    _randomise(afnb)
    afnb.eval()
    low, high = torch.randn(2, 6, 12, 12), torch.randn(2, 10, 5, 8)
    out = afnb(low, high)
    assert out.shape == (2, 7, 5, 8)  # the high stage sets the output size
    # Swapping the roles cannot even run: the channel counts prove which input feeds which projection.
    with pytest.raises(RuntimeError):
        afnb(high, low)
    # Changing low changes the output only through the attention (keys/values).
    out2 = afnb(low + 1.0, high)
    assert not torch.allclose(out, out2)


def test_apnb_shares_key_and_query_projection():
    apnb = PyramidPooledAttention(8, 8, key_channels=4, value_channels=4)
    assert apnb.attention.query_project is apnb.attention.key_project
    afnb = AsymmetricFusion(8, 8, 8, key_channels=4, value_channels=4)
    assert afnb.attention.query_project is not afnb.attention.key_project


def test_apnb_output_channels_may_differ_from_input():
    apnb = PyramidPooledAttention(8, 5, key_channels=4, value_channels=4).eval()
    assert apnb(torch.randn(1, 8, 6, 6)).shape == (1, 5, 6, 6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="share_key_query needs query_in_channels == key_in_channels"):
        AsymmetricAttention(4, 6, 4, share_key_query=True)
    with pytest.raises(ValueError, match="key_channels must be >= 1"):
        AsymmetricAttention(4, 4, 4, key_channels=0)
    with pytest.raises(ValueError, match="dropout"):
        PyramidPooledAttention(4, 4, dropout=1.5)


def test_backward_reaches_every_projection():
    torch.manual_seed(0)
    afnb = AsymmetricFusion(6, 8, 8, key_channels=4, value_channels=4, dropout=0.0)
    _randomise(afnb)
    afnb(torch.randn(2, 6, 6, 6), torch.randn(2, 8, 6, 6)).square().mean().backward()
    for name, p in afnb.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
