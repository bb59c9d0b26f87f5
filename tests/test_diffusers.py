"""vispos.integrations.diffusers on tiny random configs of each host (CPU, no downloads)."""
import ast
import importlib
import math
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

from diffusers import (  # noqa: E402
    CogVideoXTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    WanTransformer3DModel,
)

import vispos.integrations.diffusers as vd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _riflex_theta(theta_k: float, test_len: float) -> float:
    """By hand: min(theta_k, 0.9 * 2 pi / L')."""
    return min(theta_k, 0.9 * 2 * math.pi / test_len)


# ------------------------------------------------------------------------------------------------ HunyuanVideo
@pytest.fixture(scope="module")
def hunyuan():
    torch.manual_seed(0)
    m = HunyuanVideoTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=1, patch_size_t=1,
        guidance_embeds=False, text_embed_dim=8, pooled_projection_dim=8, rope_theta=256.0, rope_axes_dim=(8, 4, 4),
    ).eval()
    return m


def _hy_inputs(frames, h=2, w=2):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 2, frames, h, w, generator=g), timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 3, 8, generator=g), encoder_attention_mask=torch.ones(1, 3),
        pooled_projections=torch.randn(1, 8, generator=g), return_dict=False,
    )


@torch.no_grad()
def test_hunyuan_rule_off_and_scale_one_bit_identical(hunyuan):
    x = _hy_inputs(5)
    ref_rope = hunyuan.rope(x["hidden_states"])
    ref_out = hunyuan(**x)[0]
    for kw in (dict(), dict(time="none", space="none"),
               dict(time="pi", space="yarn", num_frames=5, train_frames=5, height=2, width=2, train_height=2,
                    train_width=2),
               dict(time="ntk", num_frames=4, train_frames=5)):  # shorter than training: scale 1
        with vd.apply_rule(hunyuan, **kw) as h:
            assert h.host == "hunyuan-style" and h.model_class == "HunyuanVideoTransformer3DModel"
            assert _same(hunyuan.rope(x["hidden_states"]), ref_rope), kw
            assert torch.equal(hunyuan(**x)[0], ref_out), kw
    assert "forward" not in vars(hunyuan.rope) and not hunyuan.rope._forward_hooks


@torch.no_grad()
def test_hunyuan_riflex_changes_only_kth_component(hunyuan):
    frames = 30  # latent frames; time bands 256^(-j/4) = 1, 1/4, 1/16, 1/64 -> periods 6, 25, 101, 402
    x = _hy_inputs(frames, 1, 2)
    ref_cos, ref_sin = hunyuan.rope(x["hidden_states"])
    ref_out = hunyuan(**x)[0]
    h = vd.apply_rule(hunyuan, time={"name": "riflex", "k": 2}, num_frames=frames)
    cos, sin = hunyuan.rope(x["hidden_states"])
    new = _riflex_theta(256.0 ** (-2 * 1 / 8), frames)
    assert new < 0.25
    changed = [c for c in range(cos.shape[1]) if not torch.equal(cos[:, c], ref_cos[:, c])]
    assert changed == [2, 3]  # the k-th (2nd) time band, repeated for its pair
    pos = torch.arange(frames, dtype=torch.float32).repeat_interleave(2)  # token order (t, h=1, w=2)
    expect = torch.outer(pos, torch.tensor([new], dtype=torch.float32))
    assert torch.equal(cos[:, 2], expect.cos()[:, 0]) and torch.equal(sin[:, 3], expect.sin()[:, 0])
    assert h.last_bands["time"][1].item() == new
    assert not torch.equal(hunyuan(**x)[0], ref_out)
    h.remove()
    h.remove()  # idempotent
    assert _same(hunyuan.rope(x["hidden_states"]), (ref_cos, ref_sin))
    assert torch.equal(hunyuan(**x)[0], ref_out)


@torch.no_grad()
def test_hunyuan_riflex_k_from_N_and_default_and_pi_on_space(hunyuan):
    x = _hy_inputs(30, 1, 2)
    with vd.apply_rule(hunyuan, time={"name": "riflex", "N": 24}, num_frames=30) as h:
        hunyuan.rope(x["hidden_states"])
        assert h.last_bands["time"][1].item() == _riflex_theta(0.25, 30)  # identify_k(256, 8, 24) -> k = 2
    with vd.apply_rule(hunyuan, time="riflex", train_frames=20, num_frames=30) as h:
        hunyuan.rope(x["hidden_states"])
        assert h.last_bands["time"][1].item() == _riflex_theta(0.25, 30)  # smallest period >= 20: 25 -> k = 2
    # RIFLEx on time and PI on space, in pixel units (VAE 4x temporal, 8x spatial): 117 frames -> 30 latent
    with vd.apply_rule(hunyuan, time={"name": "riflex", "k": 3}, space="pi", units="pixel", num_frames=117,
                       height=16, width=32, train_height=8, train_width=8) as h:
        cos, _ = hunyuan.rope(x["hidden_states"])
        th = torch.tensor([1.0, 256.0 ** -0.5], dtype=torch.float64)
        assert torch.equal(h.last_bands["height"], th / 2) and torch.equal(h.last_bands["width"], th / 4)
        assert h.last_bands["time"][2].item() == _riflex_theta(1 / 16, 30)
        w_pos = torch.tensor([0.0, 1.0] * 30)
        assert torch.allclose(cos[:, 12], torch.cos(w_pos * 0.25), atol=1e-7)


# ------------------------------------------------------------------------------------------- Wan / SkyReels
def _wan(cls, max_len=1024):
    torch.manual_seed(0)
    kw = dict(patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=24, in_channels=2, out_channels=2,
              text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1, rope_max_seq_len=max_len)
    return cls(**kw).eval()


def _wan_inputs(frames, h=1, w=2):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 2, frames, h, w, generator=g), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 3, 8, generator=g), return_dict=False)


@pytest.mark.parametrize("cls", [WanTransformer3DModel, SkyReelsV2Transformer3DModel])
@torch.no_grad()
def test_wan_family_off_riflex_and_undo(cls):
    m = _wan(cls)
    frames = 12  # t_dim 8: bands 1e4^(-j/4) = 1, 0.1, 0.01, 0.001 -> periods 6, 63, 628, 6283
    x = _wan_inputs(frames)
    ref_rope, ref_out = m.rope(x["hidden_states"]), m(**x)[0]
    buf = m.rope.freqs_cos
    with vd.apply_rule(m, time="pi", num_frames=12, train_frames=12, space="none"):
        assert _same(m.rope(x["hidden_states"]), ref_rope) and torch.equal(m(**x)[0], ref_out)
    h = vd.apply_rule(m, time={"name": "riflex", "k": 1}, num_frames=frames)
    cos, _ = m.rope(x["hidden_states"])
    cos, ref_cos = cos[0, :, 0], ref_rope[0][0, :, 0]
    changed = [c for c in range(cos.shape[1]) if not torch.equal(cos[:, c], ref_cos[:, c])]
    assert changed == [0, 1]
    new = _riflex_theta(1.0, frames)
    pos = torch.arange(frames).repeat_interleave(2)
    assert torch.equal(cos[:, 0], torch.cos(pos * torch.tensor(new, dtype=torch.float64)).float())
    assert not torch.equal(m(**x)[0], ref_out)
    h.remove()
    assert m.rope.freqs_cos is buf  # the original buffer object is back
    assert torch.equal(m.rope.freqs_cos, buf) and torch.equal(m(**x)[0], ref_out)


@torch.no_grad()
def test_two_expert_pipeline_gets_the_rule_on_both_transformers():
    """Wan 2.2-style pipelines hold `transformer` and `transformer_2`: both get the rule, and undo restores both."""
    from types import SimpleNamespace

    pipe = SimpleNamespace(transformer=_wan(WanTransformer3DModel), transformer_2=_wan(WanTransformer3DModel))
    x = _wan_inputs(12)
    refs = [t.rope(x["hidden_states"]) for t in (pipe.transformer, pipe.transformer_2)]
    h = vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, num_frames=12)
    for t, ref in zip((pipe.transformer, pipe.transformer_2), refs):
        cos, _ = t.rope(x["hidden_states"])
        assert not torch.equal(cos, ref[0])
        assert torch.equal(cos[0, :, 0, 0], torch.cos(torch.arange(12).repeat_interleave(2) * torch.tensor(
            _riflex_theta(1.0, 12), dtype=torch.float64)).float())
    with pytest.raises(ValueError, match="already applied"):
        vd.apply_rule(pipe.transformer_2, time="pi", num_frames=12, train_frames=6)
    h.remove()
    for t, ref in zip((pipe.transformer, pipe.transformer_2), refs):
        assert _same(t.rope(x["hidden_states"]), ref)


@torch.no_grad()
def test_wan_positions_beyond_the_cap():
    m = _wan(WanTransformer3DModel, max_len=8)
    x = _wan_inputs(10)
    with pytest.raises(RuntimeError):
        m(**x)  # diffusers: the buffer has 8 positions
    short = m.rope(_wan_inputs(8)["hidden_states"])
    with vd.apply_rule(m):  # rule off: only lengthens the tables, same formula
        cos, sin = m.rope(x["hidden_states"])
        assert cos.shape[1] == 10 * 2
        assert torch.equal(cos[:, :16], short[0]) and torch.equal(sin[:, :16], short[1])
        m(**x)
    assert m.rope.freqs_cos.shape[0] == 8


# --------------------------------------------------------------------------------------------------- CogVideoX
def _diffusers_cog_prepare():
    """diffusers' own CogVideoX pipeline RoPE method (its pipeline module needs transformers, so the method and its
    crop helper are taken from the installed source file and executed unchanged)."""
    import diffusers.pipelines.cogvideo as pkg
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    src = (Path(pkg.__file__).parent / "pipeline_cogvideox.py").read_text()
    tree = ast.parse(src)
    want = {"get_resize_crop_region_for_grid", "_prepare_rotary_positional_embeddings"}
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in want]
    assert {n.name for n in nodes} == want
    ns = {"torch": torch, "get_3d_rotary_pos_embed": get_3d_rotary_pos_embed}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "pipeline_cogvideox.py", "exec"), ns)
    return ns["_prepare_rotary_positional_embeddings"]


class _CogPipe:
    """The attributes of a CogVideoX pipeline that its RoPE method reads (text encoder not needed)."""

    vae_scale_factor_spatial = 8
    vae_scale_factor_temporal = 4

    def __init__(self, transformer):
        self.transformer = transformer


@pytest.fixture(scope="module")
def cog_pipe_cls():
    _CogPipe._prepare_rotary_positional_embeddings = _diffusers_cog_prepare()
    return _CogPipe


def _cog(patch_size_t):
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=32, in_channels=2, out_channels=2, time_embed_dim=8,
        text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        patch_size_t=patch_size_t, use_rotary_positional_embeddings=True,
    ).eval()


@pytest.mark.parametrize("p_t", [None, 2], ids=["cogvideox1.0-linspace", "cogvideox1.5-slice"])
@torch.no_grad()
def test_cogvideox_pipeline_path(cog_pipe_cls, p_t):
    model = _cog(p_t)
    pipe = cog_pipe_cls(model)
    frames, hp, wp = 24, 32, 48  # latent frames; pixels (latent 4 x 6, grid 2 x 3)
    ref = pipe._prepare_rotary_positional_embeddings(hp, wp, frames, "cpu")
    g = torch.Generator().manual_seed(2)
    x = dict(hidden_states=torch.randn(1, frames, 2, hp // 8, wp // 8, generator=g),
             encoder_hidden_states=torch.randn(1, 3, 8, generator=g), timestep=torch.tensor([500]), return_dict=False)
    ref_out = model(**x, image_rotary_emb=ref)[0]
    with vd.apply_rule(pipe, time="none", space="pi", height=4, width=6, train_height=4, train_width=6) as h:
        assert h.host == "cogvideox-pipeline"
        got = pipe._prepare_rotary_positional_embeddings(hp, wp, frames, "cpu")
        assert _same(got, ref)
        assert torch.equal(model(**x, image_rotary_emb=got)[0], ref_out)
        # the bare-transformer helper gives the same tensors
        assert _same(vd.cogvideox_rotary_emb(model, frames, 4, 6), ref)
    # RIFLEx on time: dim_t = 8, bands 1e4^(-j/4) = 1, 0.1, ... periods 6, 63; k = 1 needs L' > 6
    t_len = frames if p_t is None else frames // 2  # 1.5: one temporal position per 2 latent frames
    h = vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, num_frames=frames)
    cos, sin = pipe._prepare_rotary_positional_embeddings(hp, wp, frames, "cpu")
    changed = [c for c in range(cos.shape[1]) if not torch.equal(cos[:, c], ref[0][:, c])]
    assert changed == [0, 1]
    new = _riflex_theta(1.0, t_len)
    pos = torch.arange(t_len, dtype=torch.float32).repeat_interleave(6)
    if p_t is None:
        pos = torch.linspace(0, t_len * (t_len - 1) / t_len, t_len).repeat_interleave(6)
    assert torch.equal(cos[:, 0], torch.cos(pos * torch.tensor(new, dtype=torch.float32)))
    assert h.last_bands["time"][0].item() == new
    assert _same(vd.cogvideox_rotary_emb(model, frames, 4, 6, time={"name": "riflex", "k": 1}), (cos, sin))
    assert not torch.equal(model(**x, image_rotary_emb=(cos, sin))[0], ref_out)
    h.remove()
    assert "_prepare_rotary_positional_embeddings" not in vars(pipe)
    assert _same(pipe._prepare_rotary_positional_embeddings(hp, wp, frames, "cpu"), ref)


@torch.no_grad()
def test_cogvideox15_grid_beyond_base_size(cog_pipe_cls):
    pipe = cog_pipe_cls(_cog(2))
    with pytest.raises(RuntimeError):
        pipe._prepare_rotary_positional_embeddings(8 * 12, 8 * 4, 4, "cpu")  # grid 6 rows > base 4
    with vd.apply_rule(pipe):
        cos, _ = pipe._prepare_rotary_positional_embeddings(8 * 12, 8 * 4, 4, "cpu")
    assert cos.shape == (2 * 6 * 2, 32)


def test_bare_cogvideox_transformer_points_to_the_pipeline_or_helper():
    with pytest.raises(ValueError, match="cogvideox_rotary_emb"):
        vd.apply_rule(_cog(None), time="riflex", num_frames=20, train_frames=13)


# --------------------------------------------------------------------------------------------------- LTX-Video
@pytest.fixture(scope="module")
def ltx():
    torch.manual_seed(0)
    return LTXVideoTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=26, cross_attention_dim=26,
        num_layers=1, caption_channels=8,
    ).eval()


def _ltx_inputs(frames, h=1, w=2):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, frames * h * w, 2, generator=g),
                encoder_hidden_states=torch.randn(1, 3, 8, generator=g), timestep=torch.tensor([500]),
                encoder_attention_mask=torch.ones(1, 3), num_frames=frames, height=h, width=w,
                rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False)


def _ltx_rope(m, x):
    return m.rope(x["hidden_states"], x["num_frames"], x["height"], x["width"], x["rope_interpolation_scale"])


@torch.no_grad()
def test_ltx_off_riflex_only_kth_and_undo(ltx):
    frames = 40
    x = _ltx_inputs(frames)
    ref_rope, ref_out = _ltx_rope(ltx, x), ltx(**x)[0]
    with vd.apply_rule(ltx, time="pi", num_frames=frames, train_frames=frames, space="none"):
        assert _same(_ltx_rope(ltx, x), ref_rope) and torch.equal(ltx(**x)[0], ref_out)
    # dim 26 -> 4 bands per axis, omega_j = 1e4^(j/3) pi/2; per-frame theta_j = 2 omega_j * (8/25) / 20
    step = (8 / 25) / 20
    omega = [1e4 ** (j / 3) * math.pi / 2 for j in range(4)]
    theta_k = 2 * omega[1] * step  # LTX band 1 (second lowest) is k = 3: k counts from the highest
    assert 2 * math.pi / theta_k < frames
    h = vd.apply_rule(ltx, time={"name": "riflex", "k": 3}, num_frames=frames)
    cos, _ = _ltx_rope(ltx, x)
    changed = [c for c in range(cos.shape[-1]) if not torch.equal(cos[..., c], ref_rope[0][..., c])]
    assert changed == [8, 9]  # 2 padding columns, then (t, h, w) x 2 per band: band 1 of time at 2 + 6
    new = _riflex_theta(theta_k, frames)
    assert h.last_bands["time"][2].item() == pytest.approx(new, rel=1e-15)
    g = torch.arange(frames, dtype=torch.float32).repeat_interleave(2) * (8 / 25) * 1 / 20
    expect = torch.tensor(new / (2 * step), dtype=torch.float32) * (g * 2 - 1)
    assert torch.allclose(cos[0, :, 8], expect.cos(), atol=1e-6)
    assert not torch.equal(ltx(**x)[0], ref_out)
    h.remove()
    assert _same(_ltx_rope(ltx, x), ref_rope) and torch.equal(ltx(**x)[0], ref_out)


@torch.no_grad()
def test_ltx_video_coords_take_rules_as_positions(ltx):
    """Explicit video_coords (the LTX condition pipeline): positions in units of the median coordinate gap. On the
    coordinates of a regular grid a rule gives the regular-grid mode's tables (to float32 rounding of the step)."""
    frames = 40
    x = _ltx_inputs(frames)
    s_t = 8 / 25
    idx = torch.arange(frames, dtype=torch.float32).repeat_interleave(2)
    coords = torch.stack([idx * s_t * 1, torch.zeros_like(idx), torch.tensor([0.0, 32.0] * frames)])[None]
    ref = ltx.rope(x["hidden_states"], video_coords=coords)
    with vd.apply_rule(ltx):
        assert _same(ltx.rope(x["hidden_states"], video_coords=coords), ref)  # rule off: diffusers' own
    rule = {"name": "riflex", "k": 3}
    with vd.apply_rule(ltx, time=rule) as h:
        got = ltx.rope(x["hidden_states"], video_coords=coords)
        coords_band = h.last_bands["time"].clone()
        grid_mode = _ltx_rope(ltx, x)
        grid_band = h.last_bands["time"].clone()
    assert not _same(got, ref)
    assert torch.allclose(coords_band, grid_band, rtol=1e-6, atol=0)
    assert torch.allclose(got[0], grid_mode[0], atol=2e-5) and torch.allclose(got[1], grid_mode[1], atol=2e-5)
    changed = [c for c in range(got[0].shape[-1]) if not torch.equal(got[0][..., c], ref[0][..., c])]
    assert changed == [8, 9]  # only the k-th time band
    # a clamped first frame (coordinates 0, 1/25, 9/25, ...) does not change the step: the median gap is 8/25
    clamped = coords.clone()
    clamped[0, 0] = ((idx * 8 + 1 - 8).clamp(min=0)) / 25
    with vd.apply_rule(ltx, time=rule) as h:
        ltx.rope(x["hidden_states"], video_coords=clamped)
        assert torch.allclose(h.last_bands["time"], grid_band, rtol=1e-6, atol=0)
    assert _same(ltx.rope(x["hidden_states"], video_coords=coords), ref)


# ------------------------------------------------------------------------------------------------------ errors
def test_errors_are_clear(hunyuan):
    with pytest.raises(ValueError, match="unsupported object Linear.*wan-style"):
        vd.apply_rule(torch.nn.Linear(2, 2), time="riflex")
    with pytest.raises(ValueError, match="units"):
        vd.apply_rule(hunyuan, units="frames")
    with pytest.raises(ValueError, match="train_frames"):
        vd.apply_rule(hunyuan, time="pi", num_frames=40)
    with pytest.raises(ValueError, match="out of range"):
        vd.apply_rule(hunyuan, time={"name": "riflex", "k": 9}, num_frames=40)
    with pytest.raises(ValueError, match=r"4\*m \+ 1"):
        vd.apply_rule(hunyuan, time={"name": "riflex", "k": 2}, num_frames=100, units="pixel")
    with pytest.raises(TypeError, match="num_frames"):
        vd.apply_rule(hunyuan, time={"name": "riflex", "k": 2}, num_frames="40")
    with pytest.raises(ValueError, match="unknown scaling rule"):
        vd.apply_rule(hunyuan, time="rifle")
    with vd.apply_rule(hunyuan, time={"name": "riflex", "k": 2}, num_frames=40):
        with pytest.raises(ValueError, match="already applied"):
            vd.apply_rule(hunyuan)
    assert "forward" not in vars(hunyuan.rope) and not hunyuan.rope._forward_hooks


def test_package_and_riflex_table_need_no_diffusers(monkeypatch):
    """Adapters match by structure, so the package imports (and `vispos riflex` runs) without diffusers."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    for name in [m for m in sys.modules if m.startswith("vispos.integrations.diffusers")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError):
        importlib.import_module("diffusers")
    pkg = importlib.import_module("vispos.integrations.diffusers")
    assert importlib.import_module("vispos.integrations.diffusers.report").riflex_table("wan", frames=42)["k"] >= 1
    with pytest.raises(ValueError, match="hunyuan-style"):
        pkg.apply_rule(torch.nn.Linear(2, 2), time="riflex")


# -------------------------------------------------------------------------------------------------------- docs
def test_docs_snippets_run():
    text = (ROOT / "docs" / "diffusers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        ns = {"__name__": f"docs_diffusers_{i}"}
        exec(compile(block, f"docs/diffusers.md[block {i}]", "exec"), ns)
