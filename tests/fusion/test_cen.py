import math

import pytest
import torch

from fusion import build_model
from fusion.backbones import build_backbone
from fusion.backbones.resnet import BasicBlock
from fusion.cen import (
    BatchNorm2dParallel,
    CENBackbone,
    ChannelExchange,
    ModuleParallel,
    cen_l1,
    channel_exchange,
    partition,
    plain_key,
    to_parallel,
)
from fusion.config import ModelConfig
from fusion.models.cen import unimodal_equivalent

TINY = {"name": "cen", "modalities": ["rgb", "depth"], "width": 0.25}


def _inputs(b=2, size=64):
    return {"rgb": torch.randn(b, 3, size, size), "depth": torch.rand(b, 1, size, size) * 5}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_exchange_replaces_small_gamma_channels_with_the_other_modality():
    x0, x1 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    g0 = torch.tensor([1.0, 0.001, 0.5, 1.0])
    g1 = torch.tensor([-0.01, 1.0, 1.0, 0.019])
    out0, out1 = channel_exchange([x0, x1], [g0, g1], threshold=0.02)
    assert torch.equal(out0[:, 1], x1[:, 1])
    assert torch.equal(out0[:, [0, 2, 3]], x0[:, [0, 2, 3]])
    assert torch.equal(out1[:, [0, 3]], x0[:, [0, 3]])  # |-0.01| and 0.019 are below 0.02
    assert torch.equal(out1[:, [1, 2]], x1[:, [1, 2]])


def test_exchange_is_strict_at_the_threshold():
    # |gamma| < threshold exchanges; a gamma at the threshold, or just above it, keeps its own channel.
    x0, x1 = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    out0, _ = channel_exchange([x0, x1], [torch.tensor([0.02, 0.021, 0.05]), torch.ones(3)], threshold=0.02)
    assert torch.equal(out0, x0)
    out0, _ = channel_exchange([x0, x1], [torch.tensor([0.0199, 0.02, 1.0]), torch.ones(3)], threshold=0.02)
    assert torch.equal(out0[:, 0], x1[:, 0]) and torch.equal(out0[:, 1:], x0[:, 1:])


def test_exchange_with_three_modalities_takes_the_mean_of_the_other_two():
    xs = [torch.full((1, 2, 2, 2), v) for v in (1.0, 2.0, 6.0)]
    gammas = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]
    out = channel_exchange(xs, gammas, threshold=0.02)
    assert out[0][0, 0].eq(4.0).all() and out[0][0, 1].eq(1.0).all()
    assert out[1][0, 1].eq(3.5).all() and out[1][0, 0].eq(2.0).all()
    assert torch.equal(out[2], xs[2])


def test_exchange_is_a_noop_when_all_gammas_are_large():
    bn = BatchNorm2dParallel(5, 2)
    xs = [torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)]
    out = ChannelExchange(0.02)(xs, bn)
    assert all(torch.equal(o, x) for o, x in zip(out, xs, strict=True))
    with torch.no_grad():
        bn.bns[1].weight[2] = 0.0
    out = ChannelExchange(0.02)(xs, bn)
    assert torch.equal(out[0], xs[0]) and torch.equal(out[1][:, 2], xs[0][:, 2])


def test_exchange_follows_the_second_bn_of_every_block():
    enc = CENBackbone(build_backbone("resnet18", width=0.25), 2)
    assert len(enc.exchange_bns()) == 8
    block = enc.layer2[1]
    assert block.exchange.threshold == 0.02 and enc.exchange_bns()[3] is block.bn2
    seen = {}
    block.bn2.register_forward_hook(lambda m, i, o: seen.setdefault("bn2", o))
    block.exchange.register_forward_hook(lambda m, i, o: seen.setdefault("exchange_in", i[0]))
    enc([torch.randn(2, 3, 32, 32)] * 2)
    assert seen["exchange_in"] is seen["bn2"]


def test_encoder_equals_the_plain_resnet_per_modality_when_nothing_is_exchanged():
    resnet = build_backbone("resnet18", width=0.25).eval()
    enc = CENBackbone(resnet, 2).eval()
    rgb, depth = torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    feats = enc([rgb, depth])
    for stage, ref_rgb, ref_depth in zip(feats, resnet(rgb), resnet(depth.expand(-1, 3, -1, -1)), strict=True):
        torch.testing.assert_close(stage[0], ref_rgb)
        torch.testing.assert_close(stage[1], ref_depth)
    with torch.no_grad():
        enc.layer1[0].bn2.bns[0].weight[:] = 0.0  # modality 0 takes all of modality 1's channels there
    changed = enc([rgb, depth])
    assert not torch.allclose(changed[-1][0], feats[-1][0])
    torch.testing.assert_close(changed[-1][1], feats[-1][1])


def test_conv_weights_shared_and_bn_private():
    model = build_model(TINY)
    conv = model.encoder.layer1[0].conv1
    assert isinstance(conv, ModuleParallel) and sum(1 for _ in conv.parameters()) == 1
    bn = model.encoder.layer1[0].bn1
    assert bn.bns[0].weight is not bn.bns[1].weight
    model.train()
    model(_inputs())
    assert not torch.allclose(bn.bns[0].running_mean, bn.bns[1].running_mean)
    # Every CEN parameter maps onto a unimodal one; only the BNs are duplicated.
    uni = {k.removeprefix("net.backbone.") for k, _ in unimodal_equivalent(ModelConfig(**TINY)).named_parameters()}
    cen = [plain_key(k.removeprefix("encoder.")) for k, _ in model.named_parameters() if k.startswith("encoder.")]
    assert set(cen) == {k for k in uni if not k.startswith("net.heads.")}
    is_bn = [k for k in set(cen) if k.split(".")[-2].startswith("bn") or ".downsample.1." in k]
    assert is_bn and all(cen.count(k) == 2 for k in is_bn)
    assert all(cen.count(k) == 1 for k in set(cen) - set(is_bn))


def test_l1_partitions_are_disjoint_and_cover_and_equal_the_hand_sum():
    for c, m_count in ((10, 3), (7, 2), (16, 4)):
        idx = [i for m in range(m_count) for i in range(c)[partition(c, m_count, m)]]
        assert idx == list(range(c))
    assert partition(5, 2, 0) == slice(0, 2) and partition(5, 2, 1) == slice(2, 5)  # official halves
    model = build_model({**TINY, "options": {"l1_weight": 0.5}})
    expected = 0.0
    with torch.no_grad():
        for p in model.encoder.exchange_bns():
            c = p.bns[0].num_features
            p.bns[0].weight.copy_(torch.arange(1.0, c + 1))
            p.bns[1].weight.copy_(-10 * torch.arange(1.0, c + 1))
            expected += sum(range(1, c // 2 + 1)) + 10 * sum(range(c // 2 + 1, c + 1))
    assert cen_l1(model.encoder.exchange_bns()).item() == pytest.approx(expected)
    # As the official loop: lamda * L1 once per output, 2 modalities + the ensemble.
    assert model.regularization()["cen_l1"].item() == pytest.approx(3 * 0.5 * expected)


def test_ensemble_weights_softmax_and_fused_output():
    model = build_model({**TINY, "tasks": ["semseg", "depth"]}).eval()
    with torch.no_grad():
        model.alpha[0] = torch.tensor([0.0, math.log(3.0)])
    weights = model.ensemble_weights()
    torch.testing.assert_close(weights["semseg"], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(weights["depth"], torch.tensor([0.5, 0.5]))
    out = model(_inputs())
    aux = out["aux"]
    torch.testing.assert_close(out["semseg"], 0.25 * aux["rgb"]["semseg"] + 0.75 * aux["depth"]["semseg"])
    torch.testing.assert_close(out["depth"], 0.5 * aux["rgb"]["depth"] + 0.5 * aux["depth"]["depth"])
    assert out["semseg"].shape == (2, 13, 64, 64) and out["depth"].shape == (2, 1, 64, 64)
    assert model.aux_weights == {"rgb": 1.0, "depth": 1.0}


def test_detached_ensemble_trains_only_alpha_and_plain_mean_trains_all():
    model = build_model(TINY)
    model(_inputs())["semseg"].sum().backward()
    assert model.alpha.grad is not None and model.encoder.layer1[0].conv1.module.weight.grad is None
    plain = build_model({**TINY, "options": {"ensemble": False}})
    assert plain.alpha is None
    torch.testing.assert_close(plain.ensemble_weights()["semseg"], torch.tensor([0.5, 0.5]))
    plain(_inputs())["semseg"].sum().backward()
    assert plain.encoder.layer1[0].conv1.module.weight.grad is not None


def test_forward_backward_reaches_every_parameter():
    model = build_model({**TINY, "tasks": ["semseg", "normals"]})
    out = model(_inputs())
    loss = out["semseg"].mean() + sum(p.mean() for preds in out["aux"].values() for p in preds.values())
    (loss + model.regularization()["cen_l1"]).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_params_at_most_2_percent_over_the_unimodal_network(width):
    cfg = ModelConfig(**{**TINY, "width": width})
    ratio = _n_params(build_model(cfg)) / _n_params(unimodal_equivalent(cfg))
    assert 1.0 < ratio <= 1.02


def test_pretrained_weights_shared_by_convs_and_copied_into_every_bn(tmp_path):
    src = build_backbone("resnet18", width=0.25)
    state = {k: torch.randn_like(v.float()) for k, v in src.state_dict().items()}
    torch.save(state, tmp_path / "r18.pth")
    model = build_model({**TINY, "pretrained": str(tmp_path / "r18.pth")})
    torch.testing.assert_close(model.encoder.layer2[0].conv2.module.weight, state["layer2.0.conv2.weight"])
    for bn in model.encoder.layer3[1].bn2.bns:
        torch.testing.assert_close(bn.weight, state["layer3.1.bn2.weight"])
        torch.testing.assert_close(bn.running_var, state["layer3.1.bn2.running_var"])


def test_clear_errors():
    model = build_model(TINY)
    with pytest.raises(KeyError, match="model 'cen' needs input modality 'depth'; given: rgb"):
        model({"rgb": torch.randn(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="unknown option.*treshold.*known options"):
        build_model({**TINY, "options": {"treshold": 0.1}})
    with pytest.raises(ValueError, match="needs a ResNet backbone.*hrnet18"):
        build_model({**TINY, "backbone": "hrnet18"})
    with pytest.raises(ValueError, match="l1_weight must be >= 0"):
        build_model({**TINY, "options": {"l1_weight": -1.0}})
    enc = CENBackbone(build_backbone("resnet18", width=0.25), 2)
    with pytest.raises(ValueError, match="input 1 has 2 channels"):
        enc([torch.randn(1, 3, 32, 32), torch.randn(1, 2, 32, 32)])
    with pytest.raises(TypeError, match="cannot convert BasicBlock; use CENBlock"):
        to_parallel(BasicBlock(8, 8), 2)


def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_freeze_bn_keeps_encoder_statistics_while_gammas_learn_and_the_new_head_normalises():
    # The official CEN training (FREEZE_BN = True): the pretrained encoder's BNs in eval mode inside
    # model.train(); the official decoder has no BN, ours is new and must keep normalising.
    frozen = build_model({**TINY, "options": {"freeze_bn": True}}).train()
    enc_bns, head_bns = _bns(frozen.encoder), _bns(frozen.heads)
    assert enc_bns and head_bns and frozen.training
    assert not any(m.training for m in enc_bns) and all(m.training for m in head_bns)
    enc_before = [m.running_mean.clone() for m in enc_bns]
    head_before = [m.running_mean.clone() for m in head_bns]
    out = frozen(_inputs())
    (out["semseg"].mean() + sum(p.mean() for p in out["aux"].values() for p in p.values())).backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(enc_before, enc_bns, strict=True))
    moved = [not torch.equal(b, m.running_mean) for b, m in zip(head_before, head_bns, strict=True)]
    assert all(moved)  # the head's BNs use and track batch statistics
    bn = frozen.encoder.layer1[0].bn2
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bn.parameters())  # the gammas still learn
    # By default BN trains as usual: its statistics move.
    free = build_model(TINY).train()
    first = _bns(free.encoder)[0]
    start = first.running_mean.clone()
    free(_inputs())
    assert first.training and not torch.equal(start, first.running_mean)
    frozen.eval()
    assert not frozen.training and not any(m.training for m in enc_bns + head_bns)  # eval() still evaluates


# ---------------------------------------------------------------- RefineNet-LW decoder (official port)
class _Par(torch.nn.Module):  # the official ModuleParallel
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x_parallel):
        return [self.module(x) for x in x_parallel]


def _c3(i, o, bias=False):
    return _Par(torch.nn.Conv2d(i, o, kernel_size=3, stride=1, padding=1, bias=bias))


class _OfficialCRP(torch.nn.Module):
    def __init__(self, in_planes, out_planes, num_stages, num_parallel):
        super().__init__()
        for i in range(num_stages):
            setattr(
                self, "{}_{}".format(i + 1, "outvar_dimred"), _c3(in_planes if (i == 0) else out_planes, out_planes)
            )
        self.num_stages, self.num_parallel = num_stages, num_parallel
        self.maxpool = _Par(torch.nn.MaxPool2d(kernel_size=5, stride=1, padding=2))

    def forward(self, x):
        top = x
        for i in range(self.num_stages):
            top = self.maxpool(top)
            top = getattr(self, "{}_{}".format(i + 1, "outvar_dimred"))(top)
            x = [x[l] + top[l] for l in range(self.num_parallel)]  # noqa: E741
        return x


_SUFFIXES = {0: "_conv", 1: "_conv_relu_varout_dimred"}


class _OfficialRCU(torch.nn.Module):
    def __init__(self, in_planes, out_planes, num_blocks, num_stages, num_parallel):
        super().__init__()
        for i in range(num_blocks):
            for j in range(num_stages):
                setattr(
                    self,
                    f"{i + 1}{_SUFFIXES[j]}",
                    _c3(in_planes if (i == 0) and (j == 0) else out_planes, out_planes, bias=(j == 0)),
                )
        self.num_blocks, self.num_stages, self.num_parallel = num_blocks, num_stages, num_parallel
        self.relu = _Par(torch.nn.ReLU(inplace=True))

    def forward(self, x):
        for i in range(self.num_blocks):
            residual = x
            for j in range(self.num_stages):
                x = self.relu(x)
                x = getattr(self, f"{i + 1}{_SUFFIXES[j]}")(x)
            x = [x[l] + residual[l] for l in range(self.num_parallel)]  # noqa: E741
        return x


class _OfficialDecoder(torch.nn.Module):
    """The decoder half of the official RefineNet (CEN semantic_segmentation/models/model.py), for C1..C4 inputs."""

    def __init__(self, chans, num_classes, num_parallel):
        super().__init__()
        c1, c2, c3, c4 = chans
        n = self.num_parallel = num_parallel
        self.dropout = _Par(torch.nn.Dropout(p=0.5))
        self.relu = _Par(torch.nn.ReLU(inplace=True))
        self.p_ims1d2_outl1_dimred = _c3(c4, 512)
        self.adapt_stage1_b = torch.nn.Sequential(_OfficialRCU(512, 512, 2, 2, n))
        self.mflow_conv_g1_pool = torch.nn.Sequential(_OfficialCRP(512, 512, 4, n))
        self.mflow_conv_g1_b = torch.nn.Sequential(_OfficialRCU(512, 512, 3, 2, n))
        self.mflow_conv_g1_b3_joint_varout_dimred = _c3(512, 256)
        self.p_ims1d2_outl2_dimred = _c3(c3, 256)
        self.adapt_stage2_b = torch.nn.Sequential(_OfficialRCU(256, 256, 2, 2, n))
        self.adapt_stage2_b2_joint_varout_dimred = _c3(256, 256)
        self.mflow_conv_g2_pool = torch.nn.Sequential(_OfficialCRP(256, 256, 4, n))
        self.mflow_conv_g2_b = torch.nn.Sequential(_OfficialRCU(256, 256, 3, 2, n))
        self.mflow_conv_g2_b3_joint_varout_dimred = _c3(256, 256)
        self.p_ims1d2_outl3_dimred = _c3(c2, 256)
        self.adapt_stage3_b = torch.nn.Sequential(_OfficialRCU(256, 256, 2, 2, n))
        self.adapt_stage3_b2_joint_varout_dimred = _c3(256, 256)
        self.mflow_conv_g3_pool = torch.nn.Sequential(_OfficialCRP(256, 256, 4, n))
        self.mflow_conv_g3_b = torch.nn.Sequential(_OfficialRCU(256, 256, 3, 2, n))
        self.mflow_conv_g3_b3_joint_varout_dimred = _c3(256, 256)
        self.p_ims1d2_outl4_dimred = _c3(c1, 256)
        self.adapt_stage4_b = torch.nn.Sequential(_OfficialRCU(256, 256, 2, 2, n))
        self.adapt_stage4_b2_joint_varout_dimred = _c3(256, 256)
        self.mflow_conv_g4_pool = torch.nn.Sequential(_OfficialCRP(256, 256, 4, n))
        self.mflow_conv_g4_b = torch.nn.Sequential(_OfficialRCU(256, 256, 3, 2, n))
        self.clf_conv = _c3(256, num_classes, bias=True)

    def forward(self, l1, l2, l3, l4):
        n = self.num_parallel
        up = torch.nn.Upsample
        l4 = self.dropout(l4)
        l3 = self.dropout(l3)
        x4 = self.p_ims1d2_outl1_dimred(l4)
        x4 = self.adapt_stage1_b(x4)
        x4 = self.relu(x4)
        x4 = self.mflow_conv_g1_pool(x4)
        x4 = self.mflow_conv_g1_b(x4)
        x4 = self.mflow_conv_g1_b3_joint_varout_dimred(x4)
        x4 = [up(size=l3[0].size()[2:], mode="bilinear", align_corners=True)(x4_) for x4_ in x4]
        x3 = self.p_ims1d2_outl2_dimred(l3)
        x3 = self.adapt_stage2_b(x3)
        x3 = self.adapt_stage2_b2_joint_varout_dimred(x3)
        x3 = [x3[l] + x4[l] for l in range(n)]  # noqa: E741
        x3 = self.relu(x3)
        x3 = self.mflow_conv_g2_pool(x3)
        x3 = self.mflow_conv_g2_b(x3)
        x3 = self.mflow_conv_g2_b3_joint_varout_dimred(x3)
        x3 = [up(size=l2[0].size()[2:], mode="bilinear", align_corners=True)(x3_) for x3_ in x3]
        x2 = self.p_ims1d2_outl3_dimred(l2)
        x2 = self.adapt_stage3_b(x2)
        x2 = self.adapt_stage3_b2_joint_varout_dimred(x2)
        x2 = [x2[l] + x3[l] for l in range(n)]  # noqa: E741
        x2 = self.relu(x2)
        x2 = self.mflow_conv_g3_pool(x2)
        x2 = self.mflow_conv_g3_b(x2)
        x2 = self.mflow_conv_g3_b3_joint_varout_dimred(x2)
        x2 = [up(size=l1[0].size()[2:], mode="bilinear", align_corners=True)(x2_) for x2_ in x2]
        x1 = self.p_ims1d2_outl4_dimred(l1)
        x1 = self.adapt_stage4_b(x1)
        x1 = self.adapt_stage4_b2_joint_varout_dimred(x1)
        x1 = [x1[l] + x2[l] for l in range(n)]  # noqa: E741
        x1 = self.relu(x1)
        x1 = self.mflow_conv_g4_pool(x1)
        x1 = self.mflow_conv_g4_b(x1)
        x1 = self.dropout(x1)
        return self.clf_conv(x1)


def test_refinenet_lw_decoder_equals_the_official_block_with_copied_weights():
    from fusion.models.cen import RefineNetLW

    torch.manual_seed(0)
    chans = [16, 24, 32, 40]
    ours, official = RefineNetLW(chans, 5), _OfficialDecoder(chans, 5, 2)
    assert [k for k in ours.state_dict()] == [k for k in official.state_dict()]  # the official names
    official.load_state_dict(ours.state_dict(), strict=True)
    feats = [[torch.randn(2, c, 32 // 2**i, 48 // 2**i) for _ in range(2)] for i, c in enumerate(chans)]
    ours.eval(), official.eval()
    with torch.no_grad():
        got, want = ours(feats), official(*feats)
    assert len(got) == 2 and got[0].shape == (2, 5, 32, 48)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ours.modules())
    ours.train()
    torch.manual_seed(1)
    a = ours(feats)[0]
    torch.manual_seed(2)
    assert not torch.equal(a, ours(feats)[0])  # dropout is on while training


def test_cen_with_the_refinenet_lw_decoder_predicts_every_task_and_freezes_only_encoder_bns():
    model = build_model(
        {**TINY, "tasks": ["semseg", "depth"], "options": {"decoder": "refinenet_lw", "freeze_bn": True}}
    )
    out = model.train()(_inputs(size=64))
    assert out["semseg"].shape[-2:] == (64, 64) and out["depth"].shape[1] == 1
    assert set(out["aux"]) == {"rgb", "depth"}
    assert not any(m.training for m in _bns(model.encoder)) and not _bns(model.heads)
    with pytest.raises(ValueError, match="option decoder must be one of"):
        build_model({**TINY, "options": {"decoder": "fpn"}})


def test_exchanged_fractions_count_small_gammas_per_stage_and_modality():
    """Hand-set gammas: the fractions are the counts of |gamma| < threshold over each stage's second BNs."""
    from fusion.cen import exchange_diagnostics

    enc = CENBackbone(build_backbone("resnet18", width=0.25), 2, threshold=0.02)
    with torch.no_grad():
        for bn in enc.exchange_bns():
            for m in bn.bns:
                m.weight.fill_(1.0)
        # layer1: two blocks of 16 channels; rgb takes 3 + 1 channels from depth, depth takes 8.
        a, b = enc.layer1[0].bn2.bns, enc.layer1[1].bn2.bns
        a[0].weight[:3] = 0.01
        a[0].weight[3] = -0.019  # |gamma| counts, not gamma
        b[0].weight[5] = 0.02  # the rule is strict: not exchanged
        b[1].weight[:8] = 0.0
        enc.layer4[1].bn2.bns[1].weight[:] = 0.001  # depth: every channel of layer4's second block
        enc.layer1[0].bn1.bns[0].weight[:] = 0.0  # a first BN never drives an exchange
    fractions = enc.exchanged_fractions()
    c1, c4 = 2 * 16, 2 * 128
    assert fractions[0] == [4 / c1, 0.0, 0.0, 0.0]
    assert fractions[1] == [8 / c1, 0.0, 0.0, 128 / c4]
    out = exchange_diagnostics(enc, ["rgb", "depth"])
    assert out["cen/exchanged/rgb/layer1"] == 4 / c1 and out["cen/exchanged/depth/layer4"] == 0.5
    total = 2 * (16 + 32 + 64 + 128)
    assert out["cen/exchanged/rgb"] == pytest.approx(4 / total)
    assert out["cen/exchanged/depth"] == pytest.approx((8 + 128) / total)
    assert len(out) == 10
    with pytest.raises(ValueError, match="has 2 modalities"):
        exchange_diagnostics(enc, ["rgb"])
    assert CENBackbone(build_backbone("resnet18", width=0.25), 1).exchanged_fractions() == [[0.0] * 4]


def test_cen_and_cen_fused_multitask_models_report_their_exchange_and_ensemble():
    torch.manual_seed(0)
    cen = build_model({**TINY, "tasks": ["semseg", "depth"], "num_classes": 3, "options": {"threshold": 1.5}})
    d = cen.diagnostics()
    # Every gamma starts at 1.0, under this threshold: every channel is exchanged.
    assert {k: v for k, v in d.items() if k.startswith("cen/exchanged/")} == {
        f"cen/exchanged/{m}{s}": 1.0 for m in ("rgb", "depth") for s in ("", "/layer1", "/layer2", "/layer3", "/layer4")
    }
    with torch.no_grad():
        cen.alpha[1] = torch.tensor([0.0, math.log(3.0)])
    assert d["cen/ensemble/semseg/rgb"] == pytest.approx(0.5)
    d = cen.diagnostics()
    assert d["cen/ensemble/depth/rgb"] == pytest.approx(0.25) and d["cen/ensemble/depth/depth"] == pytest.approx(0.75)
    mtl = build_model(
        {
            "name": "mtl_baseline",
            "tasks": ["semseg", "depth"],
            "modalities": ["rgb", "depth"],
            "num_classes": 3,
            "width": 0.25,
            "options": {"fusion": "cen"},
        }
    )
    assert mtl.diagnostics()["cen/exchanged/depth"] == 0.0  # the default threshold: nothing below it yet
    early = build_model(
        {**TINY, "name": "mtl_baseline", "tasks": ["semseg"], "num_classes": 3, "options": {"fusion": "early"}}
    )
    assert early.diagnostics() == {}
