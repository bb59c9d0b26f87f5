"""timm NaFlexViT as a vispos host: entrypoints, both input forms, checkpoint conversion round trips, other PEs on a
mixed NaFlex batch (each sample's valid outputs = the sample alone), what is not reproduced, bad input.

Parity of every NaFlexViT PE type with timm (standard batch, rectangular batch, mixed NaFlex batch) is in the parity
matrix (tests/test_timm_parity.py, rows "NaFlexViT ...")."""
import copy
import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import timm
import torch

import vispos
from vispos.integrations.timm import install_pe

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "timm_parity.py"
if "timm_parity" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("timm_parity", _PATH)
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["timm_parity"] = _mod
    _spec.loader.exec_module(_mod)
tp = sys.modules["timm_parity"]

TINY = dict(embed_dim=64, depth=2, num_heads=2, pos_embed_grid_size=(4, 4), num_classes=5)
NAME = "naflexvit_base_patch16_gap"


def _ref(**kw):
    torch.manual_seed(0)
    m = timm.create_model(NAME, **{**TINY, **kw}).eval()
    tp.randomise(m)
    return m


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_create_model_and_entrypoints_build_a_naflexvit_host():
    m = vispos.create_model(NAME, pe="rope_axial", **TINY).eval()
    assert type(m).__name__ == "VisposNaFlexVit" and m.embeds.pos_embed is None and m.rope is None
    assert "vispos_" + NAME in timm.list_models(module="vispos")
    t = timm.create_model("vispos_" + NAME, pe=["ape", "peg"], **TINY).eval()
    assert sorted(n for n, _ in t.named_parameters() if n.startswith("pe.")) == [
        "pe.pes.0.pos_embed", "pe.pes.1.convs.0.bias", "pe.pes.1.convs.0.weight"]
    with torch.no_grad():
        assert m(torch.randn(2, 3, 48, 80)).shape == (2, 5)
        assert t(tp.naflex_batch(t)).shape == (3, 5)
        assert t.pretrained_cfg["architecture"] == "vispos_" + NAME


def test_standard_batch_and_patch_input_forms_agree():
    """A uniform NaFlex batch (no padding) is the image batch patchified: same outputs through both forms."""
    m = install_pe(_ref(rope_type="axial"), ["ape", "rope_axial"]).eval()
    x = torch.randn(2, 3, 48, 80)
    from timm.models.naflexvit import batch_patchify

    patches, (gh, gw) = batch_patchify(x, (16, 16))
    coord = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(1, -1, 2)
    coord = coord.expand(2, -1, -1)
    valid = torch.ones(2, gh * gw, dtype=torch.bool)
    with torch.no_grad():
        a = m.forward_features(x)
        b = m.forward_features(patches, patch_coord=coord, patch_valid=valid)
        assert torch.allclose(b["patches"], a, atol=1e-5)
        assert torch.allclose(m(dict(patches=patches, patch_coord=coord, patch_valid=valid)), m(x), atol=1e-5)


@pytest.mark.parametrize("kw,pe,pk", [(dict(), "ape", None), (dict(rope_type="mixed", pos_embed="none"), "rope_mixed", None),
                                      (dict(rope_type="axial"), ["ape", "rope_axial"], None),
                                      (dict(pos_embed="factorized"), "ape", None)],
                         ids=["ape", "rope_mixed", "ape+rope_axial", "factorized"])
def test_checkpoint_round_trips(tmp_path, kw, pe, pk):
    """A timm NaFlexViT checkpoint -> vispos (create_model(checkpoint_path=), load_state_dict) gives timm's outputs;
    the vispos model's own state dict reloads exactly."""
    ref = _ref(**kw)
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    batch = tp.naflex_batch(ref, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 64, 48)
    model_kw = {**TINY, **kw}
    ours = vispos.create_model(NAME, pe=pe, pe_kwargs=pk, checkpoint_path=str(path), **model_kw).eval()
    fresh = vispos.create_model(NAME, pe=pe, pe_kwargs=pk, **model_kw).eval()
    fresh.load_state_dict(ref.state_dict())  # the pre-hook converts timm's keys
    with torch.no_grad():
        want_b, want_x = ref(batch), ref(x)
        for m in (ours, fresh):
            assert _rel(m(batch), want_b) < 1e-5 and _rel(m(x), want_x) < 1e-5
        vpath = tmp_path / "vispos.pth"
        torch.save(ours.state_dict(), vpath)
        again = vispos.create_model(NAME, pe=pe, pe_kwargs=pk, checkpoint_path=str(vpath), **model_kw).eval()
        assert torch.equal(again(batch), ours(batch))
    assert not any(k.startswith("embeds.pos_embed") or k == "rope.freqs" for k in ours.state_dict())


def test_timm_checkpoint_at_another_grid_is_resampled(tmp_path):
    """A NaFlex table saved at 6x6 loads into a 4x4 model resampled with timm's rule (what timm's model computes at
    4x4 from the 6x6 table)."""
    big = _ref(pos_embed_grid_size=(6, 6))
    path = tmp_path / "big.pth"
    torch.save(big.state_dict(), path)
    ours = vispos.create_model(NAME, pe="ape", checkpoint_path=str(path), **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _rel(ours(x), big(x)) < 1e-5


@pytest.mark.parametrize("pe", ["rope_axial", "rel_decomposed", "peg", "ape", ["ape", "rope_mixed"], "ape_sincos"])
def test_other_pe_on_mixed_batch_equals_each_sample_alone(pe):
    """Any vispos PE on a NaFlexViT: each sample's valid outputs (tokens and logits) in the mixed, padded batch equal
    running that sample alone (no padding), forward and backward; padding content changes nothing."""
    torch.manual_seed(0)
    m = vispos.create_model(NAME, pe=pe, **TINY)
    tp.randomise(m)
    for p in m.pe.parameters():  # identity-initialised PEs (peg, rel-pos) made to matter
        with torch.no_grad():
            p.add_(0.2 * torch.randn_like(p))
    m.eval()
    batch = tp.naflex_batch(m, generator=torch.Generator().manual_seed(5))
    n_pre = m.num_prefix_tokens
    out = m.forward_features(batch)["patches"]
    logits = m(batch)
    logits.square().sum().backward()
    grad_batch = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    other = dict(batch, patches=batch["patches"].clone())
    other["patches"][~batch["patch_valid"]] = 7.0  # padding content
    with torch.no_grad():
        assert torch.equal(m(other), logits.detach())
    total = 0.0
    for b, (h, w) in enumerate(tp.MIXED_GRIDS):
        n = h * w
        alone = {k: v[b:b + 1, :n] for k, v in batch.items()}
        got = m.forward_features(alone)["patches"][0]
        torch.testing.assert_close(out[b, :n_pre + n], got, atol=1e-5, rtol=1e-5)
        lb = m(alone)
        torch.testing.assert_close(logits[b:b + 1], lb, atol=1e-5, rtol=1e-5)
        total = total + lb.square().sum()
    total.backward()
    for name, g in grad_batch.items():
        torch.testing.assert_close(g, m.get_parameter(name).grad, atol=1e-4, rtol=1e-4, msg=name)


def test_forward_intermediates_both_forms():
    m = vispos.create_model(NAME, pe="rope_axial", **TINY).eval()
    batch = tp.naflex_batch(m)
    with torch.no_grad():
        out = m.forward_intermediates(batch, output_fmt="NLC", output_dict=True)
        assert torch.equal(out["patch_valid"], batch["patch_valid"])
        assert torch.allclose(out["image_features"], m.forward_features(batch)["patches"])
        final, inter = m.forward_intermediates(torch.randn(2, 3, 48, 64))
        assert inter[-1].shape == (2, 64, 3, 4) and final.shape == (2, 4 + 12, 64)
        with pytest.raises(ValueError, match="NCHW"):
            m.forward_intermediates(batch)


def test_grad_checkpointing_same_outputs():
    m = vispos.create_model(NAME, pe="rel_decomposed", **TINY)
    batch = tp.naflex_batch(m)
    want = m(batch)
    m.set_grad_checkpointing(True)
    got = m(batch)
    got.sum().backward()
    torch.testing.assert_close(got, want)
    assert m.pe.parameters().__next__().grad is not None


@pytest.mark.parametrize("kw,pk,what", [
    (dict(rope_type="mixed", pos_embed="none"), None, "RotaryEmbeddingMixed"),  # replaced by an axial RoPE
    # a user option that overrides the host's table rule is reported, naming timm's setting and the fix
    (dict(pos_embed_use_grid_sample=True), dict(grid_sample=False), "pos_embed_use_grid_sample=True"),
    (dict(pos_embed_interp_mode="bilinear"), dict(mode="bicubic"), "pe_kwargs mode='bilinear'"),
])
def test_unreproduced_timm_pe_is_a_warning(caplog, kw, pk, what):
    pe = "rope_axial" if "rope_type" in kw else "ape"
    with caplog.at_level(logging.WARNING, logger="vispos.integrations.timm"):
        install_pe(_ref(**kw), pe, pk, convert=True)
    assert any(what in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("name,kw,want", [
    ("naflexvit_base_patch16_par_gap", dict(), dict(ar_preserving=True)),
    ("naflexvit_base_patch16_siglip", dict(), dict(mode="bilinear")),
    ("naflexvit_base_patch16_gap", dict(pos_embed="factorized"), dict(mode="bilinear", antialias=False)),
    ("naflexvit_base_patch16_radio_v3", dict(), dict(mode="bilinear", align_corners=True, ar_preserving=True)),
    ("naflexvit_base_patch16_gap", dict(pos_embed_use_grid_sample=True), dict(mode="bicubic", grid_sample=True)),
    ("naflexvit_base_patch16_parfac_gap", dict(pos_embed_use_grid_sample=True), dict(mode="bilinear")),
])
def test_table_settings_taken_from_the_host_without_options(caplog, name, kw, want):
    """The host's table rule becomes the ape's options with no pe_kwargs (SigLIP's bilinear, factorized bilinear,
    C-RADIOv3's align_corners, grid_sample read-out, aspect preservation); nothing is reported, and the converted
    model gives timm's outputs on a mixed NaFlex batch and an image batch."""
    torch.manual_seed(0)
    ref = timm.create_model(name, **{**TINY, **kw}).eval()
    tp.randomise(ref)
    with caplog.at_level(logging.WARNING, logger="vispos.integrations.timm"):
        ours = install_pe(copy.deepcopy(ref), "ape", convert=True).eval()
    assert ours._vispos_unreproduced == () and not caplog.records, [r.getMessage() for r in caplog.records]
    assert {k: getattr(ours.pe, k) for k in want} == want
    batch = tp.naflex_batch(ref, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        assert _rel(ours(batch), ref(batch)) < 1e-5 and _rel(ours(x), ref(x)) < 1e-5


def test_ape_grid_sample_reads_like_timm():
    """grid_sample_abs_pe is F.grid_sample at the cell centres with border padding; it differs from interpolate in
    antialias and nearest; ape(grid_sample=True) uses it on packed batches only."""
    from vispos.grid import PackedLayout
    from vispos.pe.absolute import grid_sample_abs_pe, resample_abs_pe

    t = torch.randn(1, 1 + 16, 8)
    got = grid_sample_abs_pe(t, (3, 6), (4, 4), 1, "bicubic")
    ys, xs = (torch.arange(3) * 2 + 1) / 3 - 1, (torch.arange(6) * 2 + 1) / 6 - 1
    g = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]
    want = torch.nn.functional.grid_sample(t[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), g, mode="bicubic",
                                           padding_mode="border", align_corners=False)
    torch.testing.assert_close(got[:, 1:], want.flatten(2).transpose(1, 2))
    assert torch.equal(got[:, :1], t[:, :1])
    # no antialias (timm's NaFlex default antialias=True differs on downsampled axes), nearest rounds to the centre
    torch.testing.assert_close(got, resample_abs_pe(t, (3, 6), (4, 4), 1, "bicubic"))
    assert (got - resample_abs_pe(t, (3, 6), (4, 4), 1, "bicubic", antialias=True)).abs().max() > 1e-2
    assert (grid_sample_abs_pe(t, (7, 3), (4, 4), 1, "nearest")
            - resample_abs_pe(t, (7, 3), (4, 4), 1, "nearest")).abs().max() > 1e-2
    torch.testing.assert_close(grid_sample_abs_pe(t, (3, 6), (4, 4), 1, "bilinear", align_corners=True),
                               resample_abs_pe(t, (3, 6), (4, 4), 1, "bilinear", align_corners=True))
    pe = vispos.build_pe("ape", dim=8, grid=(4, 4), antialias=True, grid_sample=True)
    coord = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(6), indexing="ij"), -1).reshape(1, 18, 2)
    x = torch.zeros(1, 18, 8)
    with torch.no_grad():
        packed = pe.forward_tokens(x, PackedLayout.from_patch_coord(coord, torch.ones(1, 18, dtype=torch.bool)))
        torch.testing.assert_close(packed, grid_sample_abs_pe(pe.pos_embed, (3, 6), (4, 4), 0, "bicubic"))
        torch.testing.assert_close(pe.forward_tokens(x, (3, 6)),
                                   resample_abs_pe(pe.pos_embed, (3, 6), (4, 4), antialias=True))
    assert "grid_sample=True" in repr(pe)
    with pytest.raises(ValueError, match="grid_sample"):
        vispos.build_pe("ape", dim=8, grid=(4, 4), mode="area", grid_sample=True)
    with pytest.raises(TypeError, match="grid_sample"):
        vispos.build_pe("ape", dim=8, grid=(4, 4), grid_sample=1)


def test_bad_inputs_named_before_work():
    m = vispos.create_model(NAME, pe="rope_axial", **TINY).eval()
    batch = tp.naflex_batch(m)
    with pytest.raises(ValueError, match="patch_coord must be"):
        m(batch["patches"], patch_coord=batch["patch_coord"][:, :3])
    with pytest.raises(ValueError, match="'patches' and 'patch_coord'"):
        m({"patches": batch["patches"]})
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        m(torch.randn(1, 3, 40, 32))
    conv = vispos.create_model(NAME, pe="ape", embed_proj_type="conv", **TINY).eval()
    with pytest.raises(ValueError, match="linear patch embedding"):
        conv(batch)
    m.train()
    drop = vispos.create_model(NAME, pe="ape", patch_drop_rate=0.5, **TINY).train()
    with pytest.raises(ValueError, match="patch dropout"):
        drop(batch)


def test_features_only_and_save_for_hf_round_trip(tmp_path):
    feats = vispos.create_model(NAME, pe="rope_axial", features_only=True, out_indices=(0, 1), **TINY).eval()
    m = vispos.create_model(NAME, pe=["ape", "rope_axial"], **TINY).eval()
    timm.models.save_for_hf(m, str(tmp_path))
    back = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 3, 48, 64)
    batch = tp.naflex_batch(m)
    with torch.no_grad():
        assert [tuple(f.shape) for f in feats(x)] == [(2, 64, 3, 4)] * 2
        assert type(back).__name__ == "VisposNaFlexVit"
        assert torch.equal(back(x), m(x)) and torch.equal(back(batch), m(batch))


@pytest.mark.parametrize("heads,section", [(2, (4, 6, 6)), (1, (8, 12, 12)), (2, (2, 4, 4))])
def test_mrope_converts_exactly_on_a_mixed_batch(caplog, heads, section):
    """rope_type='mrope' (timm RotaryEmbeddingMRope) -> rope_axial(allocation='mrope_interleaved') on the 2D grid, no
    options: timm's outputs to 1e-5 on a standard and a mixed NaFlex batch; clamped sections (head_dim 64, GenLIP's
    (8, 12, 12): 11 h, 10 w pairs) and short ones (t pairs beyond the interleave) included; nothing reported."""
    torch.manual_seed(0)
    ref = timm.create_model(NAME, **{**TINY, "num_heads": heads, "rope_type": "mrope",
                                     "rope_mrope_section": section, "pos_embed": "none"}).eval()
    tp.randomise(ref)
    with caplog.at_level(logging.WARNING, logger="vispos.integrations.timm"):
        ours = install_pe(copy.deepcopy(ref), "rope_axial", convert=True).eval()
    assert ours._vispos_unreproduced == () and not caplog.records, [r.getMessage() for r in caplog.records]
    axis = tuple(ref.rope.axis.tolist())
    assert ours.pe.allocation == "mrope_interleaved" and ours.pe.dims == (2 * axis.count(1), 2 * axis.count(2))
    batch = tp.naflex_batch(ref, generator=torch.Generator().manual_seed(4))
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        assert _rel(ours(batch), ref(batch)) < 1e-5 and _rel(ours(x), ref(x)) < 1e-5


def test_mrope_interleaved_2d_table_is_timms():
    """The 2D table: pair j turns by base^(-2j/R) times the row (j % 3 == 1), column (j % 3 == 2) or 0 (t); half
    pairing; equal to timm RotaryEmbeddingMRope.get_embed; bad sections named."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingMRope

    from vispos.pe.rope import AxialRoPE, interleaved_axes_2d

    timm_rope = RotaryEmbeddingMRope(32, mrope_section=(4, 6, 6))
    pe = AxialRoPE(32, allocation="mrope_interleaved", dims=(10, 10), base=10000.0, pairing="half")
    cos, sin = pe.get_table((3, 5))
    emb = timm_rope.get_embed((3, 5))
    torch.testing.assert_close(sin, emb[:, :16])
    torch.testing.assert_close(cos, emb[:, 32:48])
    assert interleaved_axes_2d(32, (10, 10)) == tuple(timm_rope.axis.tolist())
    assert "allocation='mrope_interleaved'" in repr(pe)
    with pytest.raises(ValueError, match="do not fit"):
        AxialRoPE(32, allocation="mrope_interleaved", dims=(12, 12))
    with pytest.raises(ValueError, match="rotary_dim"):
        AxialRoPE(32, allocation="mrope_interleaved", dims=(10, 10), rotary_dim=16)
    with pytest.raises(ValueError, match="3D"):
        AxialRoPE(32, allocation="mrope", dims=(16, 16))
