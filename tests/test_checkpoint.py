"""Checkpoint loading: the official key list of the spec (§5) written out independently of our model,
mmengine wrappers with non-tensor metadata, our own format, and readable failures."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from rapsam_edge.model import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint


def _bn(sd: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}.{name}"] = torch.randn(c)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def _ln(sd: dict, prefix: str, c: int = 256) -> None:
    sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = torch.ones(c), torch.zeros(c)


def _lin(sd: dict, prefix: str, out: int, inp: int, bias: bool = True) -> None:
    sd[f"{prefix}.weight"] = torch.randn(out, inp) * 0.02
    if bias:
        sd[f"{prefix}.bias"] = torch.zeros(out)


def _kernel_updator(sd: dict, p: str) -> None:
    _lin(sd, f"{p}.dynamic_layer", 512, 256)
    _lin(sd, f"{p}.input_layer", 512, 256)
    for name in ("input_gate", "update_gate", "fc_layer"):
        _lin(sd, f"{p}.{name}", 256, 256)
    for name in ("norm_in", "norm_out", "input_norm_in", "input_norm_out", "fc_norm"):
        _ln(sd, f"{p}.{name}")


def official_r50_state_dict() -> dict[str, torch.Tensor]:
    """The key list and shapes of spec §5 (derived from the official module definitions)."""
    sd: dict[str, torch.Tensor] = {"backbone.conv1.weight": torch.randn(64, 3, 7, 7)}
    _bn(sd, "backbone.bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for j in range(blocks):
            p = f"backbone.layer{layer}.{j}"
            sd[f"{p}.conv1.weight"] = torch.randn(planes, inplanes if j == 0 else planes * 4, 1, 1)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            sd[f"{p}.conv3.weight"] = torch.randn(planes * 4, planes, 1, 1)
            for k, c in ((1, planes), (2, planes), (3, planes * 4)):
                _bn(sd, f"{p}.bn{k}", c)
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes * 4, inplanes, 1, 1)
                _bn(sd, f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    d = "neck.deconv"
    for i, (o, c) in enumerate(((1024, 2048), (512, 1024), (256, 512), (128, 256))):
        sd[f"{d}.lateral_conv{i}.weight"], sd[f"{d}.lateral_conv{i}.bias"] = torch.randn(o, c, 1, 1), torch.zeros(o)
    for i, (cin, cout) in enumerate(((1024, 512), (512, 256), (256, 128)), start=1):
        p = f"{d}.deform_conv{i}"
        sd[f"{p}.dcn_offset.weight"], sd[f"{p}.dcn_offset.bias"] = torch.zeros(27, cin, 3, 3), torch.zeros(27)
        sd[f"{p}.dcn.weight"] = torch.randn(cout, cin, 3, 3)
        _bn(sd, f"{p}.dcn_bn", cout)
        sd[f"{p}.up_sample.weight"] = torch.randn(cout, cout, 4, 4)
        _bn(sd, f"{p}.up_bn", cout)
    sd[f"{d}.output_conv.weight"], sd[f"{d}.output_conv.bias"] = torch.randn(128, 128, 3, 3), torch.zeros(128)
    sd[f"{d}.bias"] = torch.zeros(1, 128, 1, 1)
    for name, c in (("a5", 1024), ("a4", 512), ("a3", 256), ("a2", 128)):
        sd[f"{d}.conv_{name}.weight"] = torch.randn(128, c, 1, 1)
    sd["neck.loc_conv.weight"], sd["neck.loc_conv.bias"] = torch.randn(256, 130, 1, 1), torch.zeros(256)
    h = "panoptic_head"
    sd[f"{h}.mask_tokens.weight"], sd[f"{h}.pb_embedding.weight"] = torch.randn(1, 256), torch.randn(2, 256)
    _lin(sd, f"{h}.pos_linear", 256, 512)
    sd[f"{h}.kernels.weight"] = torch.randn(100, 256)
    for s in range(3):
        p = f"{h}.mask_heads.{s}"
        _kernel_updator(sd, f"{p}.kernel_update")
        sd[f"{p}.s_atten.in_proj_weight"], sd[f"{p}.s_atten.in_proj_bias"] = torch.randn(768, 256), torch.zeros(768)
        _lin(sd, f"{p}.s_atten.out_proj", 256, 256)
        _ln(sd, f"{p}.s_atten_norm")
        _lin(sd, f"{p}.ffn.layers.0.0", 2048, 256)
        _lin(sd, f"{p}.ffn.layers.1", 256, 2048)
        _ln(sd, f"{p}.ffn_norm")
        for branch in ("cls_fcs", "mask_fcs"):
            _lin(sd, f"{p}.{branch}.0", 256, 256, bias=False)
            _ln(sd, f"{p}.{branch}.1")
        _lin(sd, f"{p}.cls_proj.0", 256, 256)
        _lin(sd, f"{p}.cls_proj.2", 256, 256)
        _lin(sd, f"{p}.cls_proj.4", 768, 256)
        _lin(sd, f"{p}.fc_mask", 256, 256)
        _lin(sd, f"{p}.iou_embed.0", 256, 256)
        _lin(sd, f"{p}.iou_embed.2", 256, 256)
        _lin(sd, f"{p}.iou_embed.4", 1, 256)
    _kernel_updator(sd, f"{h}.panoptic_attn")
    _lin(sd, f"{h}.panoptic_cls.0", 768, 256)
    sd[f"{h}.prompt_attn.attn.in_proj_weight"] = torch.randn(768, 256)
    sd[f"{h}.prompt_attn.attn.in_proj_bias"] = torch.zeros(768)
    _lin(sd, f"{h}.prompt_attn.attn.out_proj", 256, 256)
    _ln(sd, f"{h}.prompt_norm")
    _lin(sd, f"{h}.prompt_iou", 1, 256)
    return sd


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple:
    """An mmengine-style checkpoint whose metadata pickles classes we do not have (like HistoryBuffer)."""
    sd = official_r50_state_dict()
    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.arange(5.0)

    HistoryBuffer.__module__ = mod.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    vars(mod)["HistoryBuffer"] = HistoryBuffer
    fake = {"mmengine": types.ModuleType("mmengine"), "mmengine.logging": types.ModuleType("mmengine.logging"),
            mod.__name__: mod}
    sys.modules.update(fake)
    try:
        path = tmp_path_factory.mktemp("ckpt") / "rapsam_r50_12e.pth"
        torch.save({"meta": {"epoch": 12, "seed": np.int64(3)}, "state_dict": sd,
                    "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, path)
    finally:
        for name in fake:
            del sys.modules[name]
    return path, sd


def test_every_official_key_is_consumed_and_none_left_over(official):
    path, sd = official
    param_sum = sum(v.numel() for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    assert abs(param_sum / 1e6 - 47.25) < 0.01  # the spec's count from the same key list
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the mmengine metadata
        torch.load(path, weights_only=True)
    model = build_model("rapsam_r50")
    report = load_checkpoint(model, path)
    assert report.ok and report.loaded == len(sd) == len(model.state_dict())
    assert report.source == "official RAP-SAM"
    torch.testing.assert_close(model.decoder.prompt_attn.in_proj_weight,
                               sd["panoptic_head.prompt_attn.attn.in_proj_weight"])
    torch.testing.assert_close(model.prompt_encoder.pos_linear.weight, sd["panoptic_head.pos_linear.weight"])
    torch.testing.assert_close(model.neck.deconv.deform_conv2.dcn.weight,
                               sd["neck.deconv.deform_conv2.dcn.weight"])


def test_official_checkpoint_without_embeddings_warns_that_labels_are_random(official):
    with pytest.warns(UserWarning, match="class labels are random"):
        model, report = load_model(None, official[0])
    assert model.config.name == "rapsam_r50" and report is not None and report.ok


def test_mismatches_are_reported_by_name(official, tmp_path):
    sd = dict(official[1])
    del sd["panoptic_head.prompt_iou.bias"]
    sd["panoptic_head.extra.weight"] = torch.zeros(1)
    sd["neck.loc_conv.bias"] = torch.zeros(128)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = build_model("rapsam_r50")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    msg = str(err.value)
    assert "1 missing: decoder.prompt_iou.bias" in msg
    assert "1 unexpected: decoder.extra.weight" in msg
    assert "neck.loc_conv.bias checkpoint (128,) vs model (256,)" in msg
    report = load_checkpoint(model, path, strict=False)
    assert report.loaded == len(sd) - 2


def test_lite_config_refuses_an_official_dcn_checkpoint(official):
    with pytest.raises(CheckpointError, match="dcn_offset"):
        load_checkpoint(build_model("rapsam_r50_lite"), official[0])


def test_truncated_and_foreign_files_fail_with_one_sentence(official, tmp_path):
    data = official[0].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for path in (cut, text):
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
            load_checkpoint(build_model("rapsam_r18_lite"), path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(build_model("rapsam_r18_lite"), tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(build_model("rapsam_r18_lite"), tmp_path / "list.pth")


def test_own_format_round_trip_in_fp16_keeps_config_and_classes(tmp_path):
    torch.manual_seed(0)
    model = build_model("rapsam_r18_lite").eval()
    path = save_checkpoint(model, tmp_path / "mini.pth", half=True)
    loaded, report = load_model(None, path)
    assert report is not None and report.ok and loaded.config == model.config
    assert loaded.vocabulary == model.vocabulary
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3 * (1 + a.abs().max().item()), rtol=1e-2,
                                   msg=k)
    with pytest.raises(CheckpointError, match="saved from config 'rapsam_r18_lite', not 'rapsam_r18'"):
        load_model("rapsam_r18", path)


def test_bare_imagenet_resnet_initialises_the_backbone_only(tmp_path):
    """The official init is an ImageNet ResNet (torchvision layout: conv1/bn1/layer1..4/fc, no prefix):
    `train --init-checkpoint` must load it into the backbone and leave the rest to the model's own init."""
    from rapsam_edge.model.backbone import ResNet

    torch.manual_seed(1)
    imagenet = ResNet("resnet18").state_dict()
    imagenet = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in imagenet.items()}
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet, path)
    model, report = load_model("rapsam_r18_lite", path, strict=False)
    assert report.source == "ResNet backbone" and not report.unexpected and not report.mismatched
    assert report.missing and all(not k.startswith("backbone.") for k in report.missing)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])


def test_non_finite_weights_are_refused_at_load_naming_the_first_bad_tensor(tmp_path):
    from rapsam_edge.errors import NonFiniteError
    from rapsam_edge.model.checkpoint import check_finite

    check_finite({"a": torch.zeros(3), "steps": torch.tensor(5)})  # integer buffers are not judged
    with pytest.raises(NonFiniteError, match=r"x\.pth holds NaN or infinity in b\b"):
        check_finite({"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf")]),
                      "c": torch.tensor([float("nan")])}, "x.pth")
    model = build_model("rapsam_r18_lite")
    with torch.no_grad():
        model.decoder.kernels.weight[0, 0] = float("nan")
    path = save_checkpoint(model, tmp_path / "diverged.pth")
    for load in (lambda: load_model(checkpoint=path), lambda: load_checkpoint(build_model("rapsam_r18_lite"), path),
                 lambda: load_model("rapsam_r18_lite", path, strict=False)):
        with pytest.raises(NonFiniteError, match="diverged.pth holds NaN or infinity in decoder.kernels.weight"):
            load()
