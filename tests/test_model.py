"""The reference model: parameter counts, graph-contract shapes, and the exactness claims the export
split relies on (prompt independence, collapsed self-attention, pre-projected cross-attention)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rapsam_edge.config import CONFIGS, get_config
from rapsam_edge.model import build_model, parameter_counts
from rapsam_edge.model.classifier import load_text_embeddings
from rapsam_edge.model.layers import attend_heads, mask_pool, project_kv_heads, self_attend, self_attend_isolated
from rapsam_edge.model.prompt import sine_encode_boxes
from rapsam_edge.model.rapsam import RapSam

SMALL = (128, 160)


@pytest.fixture(scope="module")
def lite() -> RapSam:
    torch.manual_seed(0)
    return build_model(get_config("rapsam_r18_lite").replace(input_size=SMALL)).eval()


def test_parameter_counts_match_the_paper_and_spec():
    counts = {name: parameter_counts(build_model(name))["total"] / 1e6 for name in CONFIGS}
    assert abs(counts["rapsam_r50"] - 47.2) <= 0.1  # paper Table 3 and spec §5 (47.25M)
    assert abs(counts["rapsam_r18"] - 20.83) < 0.01  # spec §5: 11.18 + 1.26 + 8.39 (R18 channels)
    # lite necks drop the offset convs; learned classifiers add C x 768 embeddings
    assert counts["rapsam_r18_lite"] < counts["rapsam_r18"] + 0.11
    r50 = parameter_counts(build_model("rapsam_r50"))
    assert abs(r50["backbone"] / 1e6 - 23.51) < 0.01 and abs(r50["neck"] / 1e6 - 15.35) < 0.01


@pytest.mark.parametrize("name", ["rapsam_r18_lite", "rapsam_r18"])
def test_graph_contract_shapes(name: str):
    torch.manual_seed(0)
    model = build_model(get_config(name).replace(input_size=SMALL)).eval()
    h, w = SMALL
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 3, h, w) * 255)
        assert feats.shape == (1, 256, h // 4, w // 4)
        cls, masks, queries = model.decode_objects(feats)
        c = model.vocabulary.num_classes
        assert cls.shape == (1, 100, c + 1) and masks.shape == (1, 100, h // 4, w // 4)
        assert queries.shape == (1, 100, 256)
        assert torch.all(cls[..., -1] == 0)  # background logit is the constant 0 of the zero embedding row
        assert cls.abs().max() <= 100.0 + 1e-3  # adapter logits are 100 * cosine
        boxes = torch.tensor([[[0.5, 0.5, 0.02, 0.02], [0.1, 0.9, 0.3, 0.2]]])
        pm, iou = model.decode_prompts(feats, boxes)
        assert pm.shape == (1, 2, h // 4, w // 4) and iou.shape == (1, 2)


def test_k_prompts_in_one_call_equal_k_separate_calls(lite: RapSam):
    torch.manual_seed(1)
    with torch.no_grad():
        feats = lite.encode(torch.rand(1, 3, *SMALL) * 255)
        boxes = torch.rand(1, 7, 4) * 0.8 + 0.1
        masks, iou = lite.decode_prompts(feats, boxes)
        # batched and single matmuls round differently: compare at float32 precision of the logit scale
        tol = 1e-5 * float(masks.abs().max())
        for k in range(7):
            mk, ik = lite.decode_prompts(feats, boxes[:, k:k + 1])
            torch.testing.assert_close(mk[0, 0], masks[0, k], atol=tol, rtol=1e-4)
            torch.testing.assert_close(ik[0, 0], iou[0, k], atol=1e-5, rtol=1e-5)
        # the cached key/value memory gives the same answer as recomputing it
        m2, i2 = lite.decode_prompts(feats, boxes, lite.prompt_memory(feats))
        torch.testing.assert_close(m2, masks)
        torch.testing.assert_close(i2, iou)


def test_isolated_self_attention_equals_official_diagonal_mask():
    torch.manual_seed(2)
    mha = torch.nn.MultiheadAttention(256, 8)  # sequence-first, as the official s_atten
    x = torch.randn(2, 5, 256)
    # official prompt mask: True (= may not attend) everywhere except the diagonal
    mask = ~torch.eye(5, dtype=torch.bool)
    ref = mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), attn_mask=mask)[0].transpose(0, 1)
    torch.testing.assert_close(self_attend_isolated(x, mha), ref, atol=1e-5, rtol=1e-5)
    full = mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))[0].transpose(0, 1)
    torch.testing.assert_close(self_attend(x, mha), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_attention_with_per_head_memory_equals_torch_mha(dtype):
    """The prompt adapter's attention over the encoder's per-head keys/values (scale folded into the query
    projection, no re-layout per click) equals nn.MultiheadAttention to the dtype's rounding, and the memory
    has the graph contract's layout: keys (B, heads, d, h*w), values (B, heads, h*w, d)."""
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(256, 8, batch_first=True).to(dtype)
    torch.nn.init.normal_(mha.in_proj_bias)  # non-zero biases: the keys' bias broadcasts along h*w
    q = torch.randn(2, 4, 256, dtype=dtype)
    feats = torch.randn(2, 256, 6, 7, dtype=dtype)
    tokens = feats.flatten(2).transpose(1, 2)
    ref = mha(q, tokens, tokens)[0]
    k, v = project_kv_heads(feats, mha)
    assert k.shape == (2, 8, 32, 42) and v.shape == (2, 8, 42, 32)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(attend_heads(q, k, v, mha), ref, atol=tol, rtol=tol)


def test_mask_pool_is_hard_sum_pooling():
    torch.manual_seed(4)
    logits, feats = torch.randn(2, 3, 5, 6), torch.randn(2, 8, 5, 6)
    ref = torch.einsum("bnhw,bchw->bnc", (logits.sigmoid() > 0.5).float(), feats)
    torch.testing.assert_close(mask_pool(logits, feats), ref)


def test_sine_encoding_matches_the_detr_definition():
    box = torch.tensor([[0.3, 0.6, 0.05, 0.1]])
    enc = sine_encode_boxes(box)[0]
    assert enc.shape == (512,)
    # part order (y, x, w, h); within a part index i uses freq 10000^(2*floor(i/2)/128), sin for even, cos odd
    for part, value in enumerate((0.6, 0.3, 0.05, 0.1)):
        for i in (0, 1, 2, 77, 127):
            arg = value * 2 * math.pi / 10000 ** (2 * (i // 2) / 128)
            want = math.sin(arg) if i % 2 == 0 else math.cos(arg)
            assert enc[part * 128 + i].item() == pytest.approx(want, abs=1e-5)


def test_stack_frames_matches_the_official_rearrangement():
    f = torch.randn(6, 4, 3, 5)  # B*T with B=2, T=3
    ref = f.unflatten(0, (2, 3)).transpose(1, 2).flatten(2, 3)
    assert torch.equal(RapSam.stack_frames(f, 3), ref)


def test_backbone_batch_norm_stays_frozen_in_train_mode(lite: RapSam):
    lite.train()
    try:
        assert all(not m.training for m in lite.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert any(m.training for m in lite.neck.modules() if isinstance(m, torch.nn.BatchNorm2d))
    finally:
        lite.eval()


def test_text_classifier_from_the_official_embedding_format(tmp_path):
    vocab_size = 133
    emb = F.normalize(torch.randn(vocab_size, 17, 768), dim=-1)
    path = tmp_path / "convnext_large_d_320_CocoPanopticOVDataset.pth"
    torch.save(emb, path)
    model = build_model("rapsam_r50", class_embeddings=path)
    assert model.classifier.source == "file" and model.classifier.kind == "text"
    assert "classifier.embeddings" not in model.state_dict()  # non-persistent, as upstream
    x = F.normalize(torch.randn(1, 2, 768), dim=-1)
    logits = model.classifier(x)
    want = torch.einsum("bnd,cpd->bncp", x, emb).amax(-1)
    torch.testing.assert_close(logits[..., :-1], want, atol=1e-5, rtol=1e-5)
    torch.save(emb * 2, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not unit-norm"):
        load_text_embeddings(tmp_path / "bad.pth", vocab_size)
    torch.save(emb[:10], tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"shape \(133, P, 768\)"):
        load_text_embeddings(tmp_path / "short.pth", vocab_size)


def test_unknown_config_names_the_known_ones():
    with pytest.raises(ValueError, match="Did you mean rapsam_r18_lite"):
        get_config("rapsam_r18_lit")
    with pytest.raises(ValueError, match="multiples of 32"):
        get_config("rapsam_r18").replace(input_size=(100, 128))


def test_sine_coordinates_let_a_prompt_localise_its_click():
    """With coord_encoding="sine" the neck's coordinate channels share the prompt encoder's frequencies,
    and the aligned initialisation makes the very first mask (query . F, before any decoder stage) peak
    at the clicked feature pixel: what keeps the prompt path from collapsing to click-independent masks."""
    from rapsam_edge.model.layers import mask_product

    torch.manual_seed(0)
    model = build_model("rapsam_r18_lite").eval()
    p = model.neck.sine_pairs
    feats = model.encode(torch.rand(1, 3, 160, 192) * 255)  # F is 40 x 48
    for row, col in ((5, 7), (30, 40), (20, 3)):
        box = torch.tensor([[[(col + 0.5) / 48, (row + 0.5) / 40, 6 / 192, 6 / 160]]])
        query = model.prompt_encoder(box)
        peak = mask_product(query[..., : 4 * p], feats[:, : 4 * p])[0, 0]  # the aligned channels
        assert divmod(int(peak.argmax()), 48) == (row, col)
        assert peak.max() > 0.99 * 2 * p  # each shared frequency adds cos(0) = 1 per axis at the click
    assert get_config("rapsam_r18_lite").prompt_frame == "padded"
    assert get_config("rapsam_r50").prompt_frame == "resized" and get_config("rapsam_r50").coord_encoding == "xy"
