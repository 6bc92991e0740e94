import json
import struct

import pytest
import torch
from torch import nn

from fusion.backbones import BACKBONES, build_backbone, load_pretrained
from fusion.backbones.pretrained import PretrainedError, adapt_first_conv, read_state_dict
from fusion.heads import ConvBNReLU, MultiScaleHead, concat_scales, make_head, upsample_to


def _torchvision_resnet18_keys() -> set[str]:
    """The state-dict keys of torchvision's resnet18, written out from its module layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{s}" for s in bn)}
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight", *(f"{p}.bn{i}.{s}" for i in (1, 2) for s in bn)}
        if layer > 1:
            keys |= {f"layer{layer}.0.downsample.0.weight", *(f"layer{layer}.0.downsample.1.{s}" for s in bn)}
    return keys


@pytest.mark.parametrize("name,expansion", [("resnet18", 1), ("resnet34", 1), ("resnet50", 4)])
@pytest.mark.parametrize("output_stride,strides", [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_resnet_shapes_follow_channels_and_strides(name, expansion, output_stride, strides):
    net = build_backbone(name, width=0.25, output_stride=output_stride)
    assert net.strides == strides
    assert net.channels == [16 * expansion, 32 * expansion, 64 * expansion, 128 * expansion]
    feats = net(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(net.channels, strides, strict=True)
    ]


def test_dilation_replaces_stride_in_stages_3_and_4():
    net = build_backbone("resnet18", width=0.25, output_stride=8)
    # The first block of a dilated stage keeps the previous dilation (torchvision's rule).
    assert net.layer3[0].conv1.dilation == (1, 1) and net.layer3[0].conv1.stride == (1, 1)
    assert net.layer3[1].conv1.dilation == (2, 2)
    assert net.layer4[0].conv1.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)
    assert net.layer4[0].downsample[0].stride == (1, 1)


def test_width_multiplier_has_a_floor_of_8():
    net = build_backbone("resnet50", width=0.01)
    assert net.channels == [32, 32, 32, 32]
    assert net.bn1.num_features == 8


def test_deep_stem_is_three_3x3_convs_named_as_timm():
    net = build_backbone("resnet18", width=0.5, deep_stem=True)
    convs = [m for m in net.conv1 if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [c.out_channels for c in convs] == [16, 16, 32]
    assert {"conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight"} <= set(
        net.state_dict()
    )
    assert [f.shape[-1] for f in net(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]


def test_resnet18_keys_are_torchvision_keys_without_fc():
    assert set(build_backbone("resnet18").state_dict()) == _torchvision_resnet18_keys() - {"fc.weight", "fc.bias"}


def test_hrnet18_four_scales_and_official_structure():
    net = build_backbone("hrnet18")
    assert net.channels == [18, 36, 72, 144] and net.strides == [4, 8, 16, 32]
    assert build_backbone("hrnet18", width=0.5).channels == [9, 18, 36, 72]
    # w18-small-v2: 1, 3 and 2 modules in stages 2-4, two basic blocks per branch.
    assert [len(net.stage2), len(net.stage3), len(net.stage4)] == [1, 3, 2]
    assert len(net.stage4[0].branches[3]) == 2
    # Fusion 1/4 -> 1/32 is three stride-2 convs; 1/32 -> 1/4 a 1×1 conv (then upsampling).
    down = net.stage4[0].fuse_layers[3][0]
    assert len(down) == 3 and all(step[0].stride == (2, 2) for step in down)
    assert net.stage4[0].fuse_layers[0][3][0].kernel_size == (1, 1)
    keys = set(net.state_dict())
    assert {
        "transition1.0.0.weight",
        "transition1.1.0.0.weight",
        "transition3.3.0.0.weight",
        "stage4.1.fuse_layers.3.0.2.0.weight",
        "layer1.0.downsample.0.weight",
    } <= keys
    feats = build_backbone("hrnet18", width=0.5)(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 9, 16, 16), (2, 18, 8, 8), (2, 36, 4, 4), (2, 72, 2, 2)]


def _hrnetv2_seg_params(name: str, classes: int = 19) -> int:
    """Backbone plus the official HRNetV2 segmentation head (1×1 conv with bias, BN, 1×1 conv)."""
    net = build_backbone(name, width=1.0)
    c = sum(net.channels)
    return sum(p.numel() for p in net.parameters()) + (c * c + c) + 2 * c + (c * classes + classes)


def test_hrnet_configs_match_official_structure_and_size():
    # The official MTI-Net code's hrnet_w18 / w32 / w48 configs (W18 is w18-small-v2).
    for name, channels, stage1, modules, blocks in [
        ("hrnet18", [18, 36, 72, 144], 2, [1, 3, 2], 2),
        ("hrnet32", [32, 64, 128, 256], 4, [1, 4, 3], 4),
        ("hrnet48", [48, 96, 192, 384], 4, [1, 4, 3], 4),
    ]:
        net = build_backbone(name)
        assert net.channels == channels and net.strides == [4, 8, 16, 32], name
        assert len(net.layer1) == stage1, name
        assert [len(net.stage2), len(net.stage3), len(net.stage4)] == modules, name
        assert {len(b) for m in net.stage4 for b in m.branches} == {blocks}, name
    # The HRNet paper's Cityscapes table: HRNetV2-W18-Small-v2 3.9M and HRNetV2-W48 65.9M parameters
    # with the segmentation head (19 classes).
    assert round(_hrnetv2_seg_params("hrnet18") / 1e6, 1) == 3.9
    assert round(_hrnetv2_seg_params("hrnet48") / 1e6, 1) == 65.9
    feats = build_backbone("hrnet48", width=0.125)(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 16), (1, 12, 8, 8), (1, 24, 4, 4), (1, 48, 2, 2)]


def test_hrnet_fusion_sums_every_branch():
    module = build_backbone("hrnet18", width=0.5).stage2[0].eval()
    xs = [torch.randn(1, 9, 8, 8), torch.randn(1, 18, 4, 4)]
    for branch in module.branches:
        branch.forward = lambda x: x  # isolate the fusion
    out = module(xs)
    expected0 = torch.relu(xs[0] + upsample_to(module.fuse_layers[0][1](xs[1]), (8, 8)))
    expected1 = torch.relu(xs[1] + module.fuse_layers[1][0](xs[0]))
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], expected1)


def test_backward_reaches_every_parameter():
    for name in BACKBONES:
        net = build_backbone(name, width=0.125)
        sum(f.mean() for f in net(torch.randn(2, 3, 64, 64))).backward()
        assert all(p.grad is not None for p in net.parameters()), name


def test_bad_names_and_options_are_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'.*resnet18"):
        build_backbone("resnet7")
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32, got 4"):
        build_backbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="hrnet18.*output_stride must be 32"):
        build_backbone("hrnet18", output_stride=8)
    with pytest.raises(ValueError, match="'hrnet48' has its own two-conv stem"):
        build_backbone("hrnet48", deep_stem=True)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_backbone("resnet18", width=0)


def _checkpoint_like_torchvision(net: nn.Module) -> dict[str, torch.Tensor]:
    state = {
        f"module.{k}": torch.randn_like(v.float())
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    state["module.fc.weight"] = torch.randn(1000, net.channels[-1])
    state["module.fc.bias"] = torch.randn(1000)
    return state


def test_pretrained_loads_torchvision_style_checkpoint(tmp_path):
    src = build_backbone("resnet18", width=0.25)
    state = _checkpoint_like_torchvision(src)
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    net = build_backbone("resnet18", width=0.25, pretrained=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(net.layer3[1].bn2.running_var, state["module.layer3.1.bn2.running_var"])
    torch.testing.assert_close(net.conv1.weight, state["module.conv1.weight"])


def test_pretrained_adapts_first_conv_for_depth_and_rgbd(tmp_path):
    state = _checkpoint_like_torchvision(build_backbone("resnet18", width=0.25))
    torch.save(state, tmp_path / "r18.pt")
    rgb_w = state["module.conv1.weight"]
    depth = build_backbone("resnet18", in_channels=1, width=0.25, pretrained=str(tmp_path / "r18.pt"))
    torch.testing.assert_close(depth.conv1.weight, rgb_w.mean(dim=1, keepdim=True))
    rgbd = build_backbone("resnet18", in_channels=4, width=0.25, pretrained=str(tmp_path / "r18.pt"))
    torch.testing.assert_close(rgbd.conv1.weight[:, :3], rgb_w)
    torch.testing.assert_close(rgbd.conv1.weight[:, 3], rgb_w.mean(dim=1))
    w = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]]])
    assert adapt_first_conv(w, 2).flatten().tolist() == [3.0, 3.0]


def test_pretrained_mismatch_lists_keys(tmp_path):
    state = _checkpoint_like_torchvision(build_backbone("resnet18", width=0.25))
    del state["module.layer4.1.bn2.weight"]
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \(1\): layer4\.1\.bn2\.weight; unexpected \(1\): extra\.weight"):
        build_backbone("resnet18", width=0.25, pretrained=str(tmp_path / "bad.pth"))
    torch.save(_checkpoint_like_torchvision(build_backbone("resnet18", width=0.25)), tmp_path / "small.pth")
    mismatch = r"shape mismatch .*conv1\.weight: checkpoint \(16, 3, 7, 7\) vs model \(32, 3, 7, 7\)"
    with pytest.raises(ValueError, match=mismatch):
        build_backbone("resnet18", width=0.5, pretrained=str(tmp_path / "small.pth"))


def test_pretrained_file_errors(tmp_path):
    net = build_backbone("resnet18", width=0.25)
    with pytest.raises(PretrainedError, match=r"w\.npz: expected a \.pth, \.pt, \.bin or \.safetensors file"):
        load_pretrained(net, tmp_path / "w.npz")
    with pytest.raises(PretrainedError, match="absent.pth: no such file .*never downloaded"):
        load_pretrained(net, tmp_path / "absent.pth")
    (tmp_path / "pickle.bin").write_bytes(b"\x80\x04not a torch file")
    with pytest.raises(PretrainedError, match=r"pickle\.bin: torch\.load\(weights_only=True\) cannot read it"):
        load_pretrained(net, tmp_path / "pickle.bin")


def test_pretrained_bin_loads_like_pth(tmp_path):
    state = _checkpoint_like_torchvision(build_backbone("resnet18", width=0.25))
    torch.save(state, tmp_path / "pytorch_model.bin")
    net = build_backbone("resnet18", width=0.25, pretrained=str(tmp_path / "pytorch_model.bin"))
    torch.testing.assert_close(net.layer2[0].conv1.weight, state["module.layer2.0.conv1.weight"])


def _safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]], metadata: dict | None = None) -> bytes:
    """A .safetensors file written by hand from its specification (no safetensors package)."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_safetensors_reads_values_dtypes_and_shapes_from_the_bytes(tmp_path):
    f32 = struct.pack("<6f", 1.0, -2.0, 3.5, 0.0, 7.25, -0.5)
    f16 = struct.pack("<2e", 1.5, -3.0)
    bf16 = struct.pack("<2H", 0x3F80, 0xC040)  # 1.0 and -3.0 as bfloat16
    i64 = struct.pack("<q", 123456789012)
    p = tmp_path / "w.safetensors"
    p.write_bytes(
        _safetensors_bytes(
            {"a": ("F32", [2, 3], f32), "b": ("F16", [2], f16), "c": ("BF16", [2], bf16), "d": ("I64", [], i64)},
            metadata={"format": "pt"},
        )
    )
    state = read_state_dict(p)
    assert sorted(state) == ["a", "b", "c", "d"]
    assert state["a"].dtype == torch.float32 and state["a"].tolist() == [[1.0, -2.0, 3.5], [0.0, 7.25, -0.5]]
    assert state["b"].dtype == torch.float16 and state["b"].tolist() == [1.5, -3.0]
    assert state["c"].dtype == torch.bfloat16 and state["c"].tolist() == [1.0, -3.0]
    assert state["d"].shape == () and state["d"].item() == 123456789012


def test_safetensors_checkpoint_loads_into_a_backbone(tmp_path):
    state = _checkpoint_like_torchvision(build_backbone("resnet18", width=0.25))
    tensors = {
        k: ("F32", list(v.shape), v.float().contiguous().numpy().astype("<f4").tobytes())
        for k, v in state.items()
        if v.is_floating_point()
    }
    (tmp_path / "r18.safetensors").write_bytes(_safetensors_bytes(tensors))
    net = build_backbone("resnet18", width=0.25, pretrained=str(tmp_path / "r18.safetensors"))
    torch.testing.assert_close(net.layer3[1].bn2.running_var, state["module.layer3.1.bn2.running_var"])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02", "shorter than the 8-byte header length"),
        (struct.pack("<Q", 10**12) + b"{}", "header length 1000000000000 exceeds the file"),
        (struct.pack("<Q", 3) + b"{x}", "header is not JSON"),
        (
            _safetensors_bytes({"a": ("F32", [4], b"\0" * 8)}),
            r"tensor 'a': 8 bytes for shape \[4\] of F32 \(16 expected\)",
        ),
        (_safetensors_bytes({"a": ("C64", [1], b"\0" * 8)}), "tensor 'a': dtype 'C64' is not one of"),
        (_safetensors_bytes({"a": ("F32", [1], b"\0" * 4)})[:-2], r"data_offsets \[0, 4\] outside the 2 data bytes"),
    ],
)
def test_safetensors_damaged_files_are_named_errors(tmp_path, data, why):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(data)
    with pytest.raises(PretrainedError, match=f"bad\\.safetensors: not a valid \\.safetensors file: .*{why}"):
        read_state_dict(p)


def test_hrnet_pretrained_drops_classification_tail(tmp_path):
    src = build_backbone("hrnet18", width=0.25)
    state = {k: torch.randn_like(v.float()) for k, v in src.state_dict().items()}
    state["classifier.weight"] = torch.randn(1000, 2048)
    state["incre_modules.0.0.conv1.weight"] = torch.randn(8, 8, 1, 1)
    torch.save(state, tmp_path / "hr.pth")
    net = build_backbone("hrnet18", width=0.25, pretrained=str(tmp_path / "hr.pth"))
    key = "stage4.1.fuse_layers.3.0.2.0.weight"
    torch.testing.assert_close(net.stage4[1].fuse_layers[3][0][2][0].weight, state[key])


def test_upsample_to_is_bilinear_half_pixel_and_noop_at_size():
    x = torch.tensor([[[[0.0, 1.0]]]])
    assert upsample_to(x, (1, 4)).flatten().tolist() == [0.0, 0.25, 0.75, 1.0]
    assert upsample_to(x, torch.Size([5, 1, 2])) is x


def test_heads():
    block = ConvBNReLU(4, 6, kernel_size=3, dilation=2)
    assert block[0].padding == (2, 2) and block[0].bias is None
    assert (block(torch.randn(2, 4, 8, 8)) >= 0).all()
    head = make_head(8, 5)
    assert head[0][0].out_channels == 8 and head[1].out_channels == 5 and head[1].bias is not None
    feats = [torch.ones(1, 2, 8, 8), torch.full((1, 3, 4, 4), 2.0)]
    cat = concat_scales(feats)
    assert cat.shape == (1, 5, 8, 8) and cat[0, 2:].eq(2.0).all()
    ms = MultiScaleHead([2, 3], 7, mid=4)
    assert ms(feats).shape == (1, 7, 8, 8)
    assert MultiScaleHead([16, 32], 3).head[0][0].out_channels == 48
