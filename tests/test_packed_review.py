"""Independent re-check of issue #17 (variable-resolution batches, NaFlexViT host): cases the first tests did not
cover. Each test failed before its fix."""
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

TINY = dict(embed_dim=64, depth=2, num_heads=2, num_classes=5)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---- C-RADIOv3 NaFlexViTs resample their learned table with align_corners=True ------------------------------------
def test_radio_v3_align_corners_table_reproduced(caplog):
    """``naflexvit_base_patch16_radio_v3`` (timm ``pos_embed_align_corners=True``, bilinear, no antialias,
    aspect-preserving) with ``ape(mode="bilinear", antialias=False, align_corners=True)`` gives timm's outputs on a
    mixed NaFlex batch and an image batch, and nothing is reported as unreproduced."""
    torch.manual_seed(0)
    ref = timm.create_model("naflexvit_base_patch16_radio_v3", pos_embed_grid_size=(8, 8), **TINY).eval()
    tp.randomise(ref)
    assert ref.embeds.pos_embed_align_corners
    with caplog.at_level(logging.WARNING):
        ours = install_pe(copy.deepcopy(ref), "ape", dict(mode="bilinear", antialias=False, align_corners=True),
                          convert=True).eval()
    assert not [r for r in caplog.records if "not reproduced" in r.getMessage()]
    batch = tp.naflex_batch(ref, grids=((4, 6), (7, 3), (1, 12), (12, 1)), length=26,
                            generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 48, 112)
    with torch.no_grad():
        assert _rel(ours(batch), ref(batch)) < 1e-5
        assert _rel(ours(x), ref(x)) < 1e-5
    # overriding the host's align_corners (taken from it by default) is reported (and real)
    with caplog.at_level(logging.WARNING):
        other = install_pe(copy.deepcopy(ref), "ape", dict(mode="bilinear", antialias=False, align_corners=False),
                           convert=True).eval()
    assert any("align_corners=True" in r.getMessage() and "pe_kwargs align_corners=True" in r.getMessage()
               for r in caplog.records)
    with torch.no_grad():
        assert _rel(other(batch), ref(batch)) > 1e-3


def test_ape_align_corners_option():
    from vispos.pe.absolute import resample_abs_pe

    t = torch.randn(1, 1 + 16, 8)
    a = resample_abs_pe(t, (6, 3), (4, 4), 1, "bilinear", align_corners=True)
    want = torch.nn.functional.interpolate(t[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(6, 3),
                                           mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
    torch.testing.assert_close(a[:, 1:], want)
    assert torch.equal(a[:, :1], t[:, :1])
    pe = vispos.build_pe("ape", dim=8, grid=(4, 4), num_prefix=1, mode="bicubic", align_corners=True)
    assert "align_corners=True" in repr(pe)
    with pytest.raises(ValueError, match="align_corners"):
        vispos.build_pe("ape", dim=8, grid=(4, 4), mode="area", align_corners=True)
    with pytest.raises(ValueError, match="align_corners"):
        resample_abs_pe(t, (6, 3), (4, 4), 1, "nearest", align_corners=True)


# ---- NaFlex patches of the wrong width are named before any work --------------------------------------------------
def test_naflex_patch_width_checked():
    m = vispos.create_model("naflexvit_base_patch16_gap", pe="rope_axial", pos_embed_grid_size=(4, 4), **TINY).eval()
    batch = tp.naflex_batch(m)
    with pytest.raises(ValueError, match=r"768 values .* got 100"):
        m(dict(batch, patches=batch["patches"][..., :100]))
    five = batch["patches"].reshape(3, 28, 16, 16, 3)
    with torch.no_grad():  # (B, N, Ph, Pw, C) at the model's patch size is accepted, as timm
        assert torch.equal(m(dict(batch, patches=five)), m(batch))
    with pytest.raises(ValueError, match=r"768 values .* got 588"):
        m(dict(batch, patches=five[:, :, :14, :14]))


def test_from_patch_coord_names_truncation_and_missing_valid():
    from timm.data.naflex_dataset import NaFlexCollator
    from timm.data.naflex_transforms import Patchify

    from vispos.grid import PackedLayout

    items = [(Patchify(patch_size=(4, 4))(torch.randn(3, 4 * h, 4 * w)), 0) for h, w in ((4, 6), (2, 3))]
    batch, _ = NaFlexCollator(max_seq_len=10)(items)  # sample 0 (24 patches) cut to 10
    with pytest.raises(ValueError, match="truncated"):
        PackedLayout.from_patch_coord(batch["patch_coord"], batch["patch_valid"])
    batch, _ = NaFlexCollator(max_seq_len=30)(items)
    with pytest.raises(ValueError, match="pass patch_valid"):
        PackedLayout.from_patch_coord(batch["patch_coord"])
    assert PackedLayout.from_patch_coord(batch["patch_coord"], batch["patch_valid"]).shapes == ((4, 6), (2, 3))


# ---- the packed rel-pos one-hot key table follows the configurable table-cache bound -----------------------------
def test_packed_onehot_cache_follows_the_table_cache_bound():
    """The ``(B, N, W)`` one-hot key columns of packed ``rel_decomposed`` were kept for the last 64 layouts whatever
    ``set_table_cache_size`` said (a NaFlex run, a new layout every batch: B=256, N=1024, W=64 fp32 is 64 MB an
    entry, 4 GB for 64). They now follow the module-level bound, least recently used first, and 0 disables them."""
    from vispos.grid import PackedLayout
    from vispos.ops import attention as A
    from vispos.pe.base import set_table_cache_size

    pe = vispos.build_pe("rel_decomposed", dim=32, num_heads=2, depth=1, grid=(4, 4), num_prefix=1)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_()

    def run(layout):
        q = torch.randn(layout.batch_size, 2, layout.num_tokens, 16)
        return A.sdpa(q, q, q, pe.attn_bias(q, layout, 0), layout=layout)

    layouts = [PackedLayout([(2, 1 + i), (3, 2)], 1) for i in range(6)]
    old = set_table_cache_size(3)
    try:
        A._ONEHOT_CACHE.clear()
        with torch.no_grad():
            for L in layouts:
                run(L)
                assert len(A._ONEHOT_CACHE) <= 3
            assert len(A._ONEHOT_CACHE) == 3
            run(layouts[3])  # a hit: most recent now, so layouts[4] is the next one evicted
            run(PackedLayout([(1, 1), (3, 2)], 1))
            kept = {k[0] for k in A._ONEHOT_CACHE}
            assert layouts[3] in kept and layouts[5] in kept and layouts[4] not in kept
            set_table_cache_size(0)
            out = run(layouts[0])
            assert len(A._ONEHOT_CACHE) == 0 and out.isfinite().all()
    finally:
        set_table_cache_size(old)
        A._ONEHOT_CACHE.clear()


# ---- a conv patch embedding with dynamic_img_pad pads height and width as timm -----------------------------------
@pytest.mark.parametrize("kw,pe", [(dict(), "ape"), (dict(rope_type="axial", pos_embed="none"), "rope_axial")],
                         ids=["ape", "rope_axial"])
def test_conv_embed_dynamic_pad_matches_timm(kw, pe):
    """``embed_proj_type='conv', dynamic_img_pad=True`` at 50x70 (pads 14 rows, 10 columns to a 4x5 grid): the
    vispos host padded the width by the height's amount and the other way round (a 3x5 grid)."""
    torch.manual_seed(0)
    ref = timm.create_model("naflexvit_base_patch16_gap", pos_embed_grid_size=(4, 4), embed_proj_type="conv",
                            dynamic_img_pad=True, **TINY, **kw).eval()
    tp.randomise(ref)
    ours = install_pe(copy.deepcopy(ref), pe, convert=True).eval()
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        feats = ours.forward_intermediates(x, indices=1, intermediates_only=True)[0]
        assert feats.shape[-2:] == (4, 5)
        assert _rel(ours(x), ref(x)) < 1e-5
