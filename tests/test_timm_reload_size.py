"""A vispos checkpoint reloaded into a model built at another ``img_size`` behaves as the saved model, for every
registered 2D PE family and the usual combinations (weights randomised so the PE matters).

At the reload size (B) every family is exact: rotary families keep the reference grids their coordinates were
built for (VoPE, interpolated / normalised RoPE, scaling rules) through a ``pe.ref_grid`` state-dict entry, and
learned tables are resampled at load with the table's own rule, as the saved model resamples at that grid. At the
saved size (A), families without a grid-sized learned table are exact too; learned tables (``ape``, ``lape``,
``rel_decomposed``) are resampled to B's grid at load as timm does, so going back to A is a lossy round trip.
"""
import logging

import pytest
import timm
import torch

import vispos

VIT = "vit_small_patch16_224"
KW = dict(embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True)
A, B = 64, 96
TABLES = {"ape", "lape", "rel_decomposed"}  # grid-sized learned tables: resampled to the new grid at load
PES = [p.name for p in vispos.list_pes() if 2 in p.ndims] + [
    ["ape", "rope_axial"], ["ape", "peg"], ["rope_mixed", "peg"], ["ape", "lape"], ["ape", "vope"]]
EXTRA = {"rope_axial": dict(coords="interpolated")}  # a grid-dependent rope_axial as well as the default


def _id(pe):
    return "+".join(pe) if isinstance(pe, list) else pe


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _x(size):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))


def _assert_same(saved, loaded, pe):
    names = set(pe if isinstance(pe, list) else [pe])
    with torch.no_grad():
        assert torch.allclose(saved(_x(B)), loaded(_x(B)), atol=1e-5, rtol=1e-5)
        if not names & TABLES:
            assert torch.allclose(saved(_x(A)), loaded(_x(A)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pe", PES + ["rope_axial_interp"], ids=_id)
def test_reload_at_other_img_size(pe, tmp_path):
    kw = {}
    if pe == "rope_axial_interp":
        pe, kw = "rope_axial", dict(pe_kwargs=EXTRA["rope_axial"])
    saved = _randomise(vispos.create_model(VIT, pe=pe, img_size=A, **kw, **KW)).eval()
    sd = saved.state_dict()
    # the family's state: tensors only (safetensors), equal to what it had at build time
    loaded = vispos.create_model(VIT, pe=pe, img_size=B, **kw, **KW).eval()
    loaded.load_state_dict(sd)
    _assert_same(saved, loaded, pe)
    # checkpoint routes: vispos checkpoint_path= and timm's own checkpoint_path=
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    _assert_same(saved, vispos.create_model(VIT, pe=pe, img_size=B, checkpoint_path=str(path), **kw, **KW).eval(), pe)
    _assert_same(saved, timm.create_model(f"vispos_{VIT}", pe=pe, img_size=B, checkpoint_path=str(path), **kw,
                                    **KW).eval(), pe)


def test_vope_reference_grid_saved_and_used():
    saved = _randomise(vispos.create_model(VIT, pe="vope", img_size=A, **KW)).eval()
    sd = saved.state_dict()
    assert sd["pe.ref_grid"].dtype == torch.float64 and sd["pe.ref_grid"].tolist() == [[4.0, 4.0], [4.0, 4.0]]
    loaded = vispos.create_model(VIT, pe="vope", img_size=B, **KW).eval()
    assert loaded.pe.ref_shape == (6, 6)
    loaded.load_state_dict(sd)
    assert loaded.pe.ref_shape == (4, 4) and loaded.pe.train_shape == (4, 4)
    # the grid matters: a model keeping its build-time grid differs (so the test above can fail)
    other = vispos.create_model(VIT, pe="vope", img_size=B, **KW).eval()
    sd_old = {k: v for k, v in sd.items() if k != "pe.ref_grid"}
    other.load_state_dict(sd_old)
    with torch.no_grad():
        assert (other(_x(A)) - saved(_x(A))).abs().max() > 1e-2


def test_older_checkpoint_without_ref_grid_loads_and_logs(caplog):
    saved = vispos.create_model(VIT, pe=["ape", "vope"], img_size=A, **KW)
    sd = {k: v for k, v in saved.state_dict().items() if not k.endswith("ref_grid")}
    loaded = vispos.create_model(VIT, pe=["ape", "vope"], img_size=A, **KW)
    with caplog.at_level(logging.INFO, logger="vispos.pe.rope"):
        loaded.load_state_dict(sd)  # strict
    assert any("ref_grid" in r.getMessage() and "build-time" in r.getMessage() for r in caplog.records)
    assert loaded.pe.members()[1].ref_shape == (4, 4)


def test_bad_ref_grid_is_an_error():
    m = vispos.create_model(VIT, pe="vope", img_size=A, **KW)
    sd = m.state_dict()
    sd["pe.ref_grid"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="ref_grid"):
        m.load_state_dict(sd)
    sd["pe.ref_grid"] = torch.tensor([[4.0, -1.0], [4.0, 4.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="reference grid"):
        m.load_state_dict(sd)


def test_safetensors_and_meta_init(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    saved = _randomise(vispos.create_model(VIT, pe="vope", img_size=A,
                                           **KW)).eval()
    path = tmp_path / "m.safetensors"
    st.save_file(saved.state_dict(), str(path))
    loaded = vispos.create_model(VIT, pe="vope", img_size=B, **KW).eval()
    loaded.load_state_dict(st.load_file(str(path)))
    _assert_same(saved, loaded, "vope")
    meta = vispos.create_model(VIT, pe="vope", img_size=A, device="meta", **KW)
    assert meta.state_dict()["pe.ref_grid"].is_meta  # state on the module's device, as its tensors
    meta.to_empty(device="cpu")
    assert meta.state_dict()["pe.ref_grid"].tolist() == [[4.0, 4.0], [4.0, 4.0]]  # no buffer to fill
    meta.load_state_dict(saved.state_dict())
    _assert_same(saved, meta.eval(), "vope")
