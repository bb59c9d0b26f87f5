"""diffusers adapters found by structure: copies of a supported RoPE, and hooks that keep running (CPU, tiny)."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

from diffusers.hooks import HookRegistry, ModelHook  # noqa: E402

import vispos.integrations.diffusers as vd  # noqa: E402


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _hunyuan_like(cls_name):
    torch.manual_seed(0)
    cls = getattr(diffusers, cls_name)
    common = dict(in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=16, num_layers=1,
                  mlp_ratio=1.0, text_embed_dim=8, rope_axes_dim=(8, 4, 4), rope_theta=256.0)
    extra = {
        "HunyuanVideoTransformer3DModel": dict(num_single_layers=1, num_refiner_layers=1, guidance_embeds=False,
                                               pooled_projection_dim=8, patch_size=1),
        "HunyuanVideo15Transformer3DModel": dict(num_refiner_layers=1, text_embed_2_dim=8, image_embed_dim=8),
        "MotifVideoTransformer3DModel": dict(num_single_layers=1, patch_size=1),
    }[cls_name]
    return cls(**common, **extra).eval()


def _wan_like(cls_name):
    torch.manual_seed(0)
    cls = getattr(diffusers, cls_name)
    if cls_name == "SanaVideoTransformer3DModel":
        return cls(in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=24, num_layers=1,
                   num_cross_attention_heads=1, cross_attention_head_dim=24, cross_attention_dim=24,
                   caption_channels=8, patch_size=(1, 1, 1), sample_size=4).eval()
    kw = dict(patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=24, out_channels=2, text_dim=8,
              freq_dim=8, ffn_dim=8, num_layers=1)
    if cls_name == "WanAnimateTransformer3DModel":
        sizes = {str(2 ** i): 8 for i in range(2, 11)}
        kw.update(in_channels=8, latent_channels=2, image_dim=8, motion_encoder_size=16, motion_style_dim=8,
                  motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=1,
                  inject_face_latents_blocks=1, motion_encoder_channel_sizes=sizes)
    elif cls_name == "WanVACETransformer3DModel":
        kw.update(in_channels=2, vace_layers=[0], vace_in_channels=2)
    else:
        kw.update(in_channels=2)
    return cls(**kw).eval()


RIFLEX = {"name": "riflex", "k": 2}
FRAMES = 30  # latent frames; time bands of both layouts have a period < 30 at k = 2 (Hunyuan 25, Wan 63 -> k 1)


@pytest.fixture(scope="module")
def hunyuan_ref():
    return _hunyuan_like("HunyuanVideoTransformer3DModel")


@pytest.mark.parametrize("cls_name", ["HunyuanVideo15Transformer3DModel", "MotifVideoTransformer3DModel"])
@torch.no_grad()
def test_hunyuan_style_copies_take_riflex_like_their_original(hunyuan_ref, cls_name):
    model = _hunyuan_like(cls_name)
    assert type(model.rope) is not type(hunyuan_ref.rope)  # a copy, not the same class
    x = torch.zeros(1, 2, FRAMES, 1, 2)
    own, ref = model.rope(x), hunyuan_ref.rope(x)
    with vd.apply_rule(model, time="none", space="none") as h:
        assert h.host == "hunyuan-style" and h.model_class == cls_name
        assert _same(model.rope(x), own)  # rule off: bit-identical to this class's own RoPE
    with vd.apply_rule(model, time=RIFLEX, num_frames=FRAMES) as h, \
            vd.apply_rule(hunyuan_ref, time=RIFLEX, num_frames=FRAMES):
        got, orig = model.rope(x), hunyuan_ref.rope(x)
        new = min(256.0 ** (-2 / 8), 0.9 * 2 * math.pi / FRAMES)
        assert h.last_bands["time"][1].item() == new
        changed = [c for c in range(got[0].shape[1]) if not torch.equal(got[0][:, c], own[0][:, c])]
        assert changed == [2, 3]
        pos = torch.arange(FRAMES, dtype=torch.float32).repeat_interleave(2)
        if _same(own, ref):  # the copy computes exactly as the original: RIFLEx gives exactly the original's tensors
            assert _same(got, orig)
            expect = (pos * torch.tensor(new, dtype=torch.float32)).cos()
        else:  # Motif-Video builds its bands in float64: the formula on its own RoPE, in its own dtype
            assert cls_name == "MotifVideoTransformer3DModel"
            expect = (pos.double() * torch.tensor(new, dtype=torch.float64)).cos().float()
        assert torch.equal(got[0][:, 2], expect)
    assert _same(model.rope(x), own) and not model.rope._forward_hooks  # undone bit-exactly


@pytest.fixture(scope="module")
def wan_ref():
    return _wan_like("WanTransformer3DModel")


@pytest.mark.parametrize("cls_name", ["WanAnimateTransformer3DModel", "SanaVideoTransformer3DModel",
                                      "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel"])
@torch.no_grad()
def test_wan_style_copies_take_riflex_like_their_original(wan_ref, cls_name):
    model = _wan_like(cls_name)
    x = torch.zeros(1, 2, FRAMES, 1, 2)
    own, ref = model.rope(x), wan_ref.rope(x)
    assert _same(own, ref)
    buf = model.rope.freqs_cos
    with vd.apply_rule(model, time="none") as h:
        assert h.host == "wan-style" and h.model_class == cls_name
        assert _same(model.rope(x), own)
    rule = {"name": "riflex", "k": 1}
    with vd.apply_rule(model, time=rule, num_frames=FRAMES), vd.apply_rule(wan_ref, time=rule, num_frames=FRAMES):
        got = model.rope(x)
        assert _same(got, wan_ref.rope(x)) and not _same(got, own)
    assert model.rope.freqs_cos is buf and _same(model.rope(x), own)


class _Counter(ModelHook):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def post_forward(self, module, output):
        self.calls += 1
        return output


def _hunyuan_call(m):
    x = torch.zeros(1, 2, FRAMES, 1, 2)
    return lambda: m.rope(x)


def _wan_call(m):
    x = torch.zeros(1, 2, FRAMES, 1, 2)
    return lambda: m.rope(x)


def _ltx():
    torch.manual_seed(0)
    return diffusers.LTXVideoTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=26, cross_attention_dim=26,
        num_layers=1, caption_channels=8).eval()


def _ltx_call(m):
    x = torch.zeros(1, 40 * 2, 2)
    return lambda: m.rope(x, 40, 1, 2, (8 / 25, 32, 32))


@pytest.mark.parametrize("build,call,rule", [
    (lambda: _hunyuan_like("HunyuanVideoTransformer3DModel"), _hunyuan_call, {"name": "riflex", "k": 2}),
    (lambda: _wan_like("WanTransformer3DModel"), _wan_call, {"name": "riflex", "k": 1}),
    (_ltx, _ltx_call, {"name": "riflex", "k": 3}),
], ids=["hunyuan-style", "wan-style", "ltx-style"])
@torch.no_grad()
def test_hooks_before_run_while_active_and_hooks_after_survive_remove(build, call, rule):
    m = build()
    rope_call = call(m)
    ref = rope_call()
    seen = {"torch_before": 0, "torch_after": 0}

    def before(mod, args, out):
        seen["torch_before"] += 1

    def after(mod, args, out):
        seen["torch_after"] += 1

    m.rope.register_forward_hook(before)
    diff_before = _Counter()
    HookRegistry.check_if_exists_or_initialize(m.rope).register_hook(diff_before, "vispos_test_before")
    h = vd.apply_rule(m, time=rule, num_frames=40 if "LTX" in type(m).__name__ else FRAMES)
    changed = rope_call()
    assert not _same(changed, ref)  # the rule acts
    assert seen["torch_before"] == 1 and diff_before.calls == 1  # hooks from before keep running
    m.rope.register_forward_hook(after)
    diff_after = _Counter()
    HookRegistry.check_if_exists_or_initialize(m.rope).register_hook(diff_after, "vispos_test_after")
    assert _same(rope_call(), changed)  # diffusers' hook wrapping forward does not hide the rule
    h.remove()
    assert _same(rope_call(), ref)  # undone bit-exactly, with the later hooks in place
    assert seen == {"torch_before": 3, "torch_after": 2} and (diff_before.calls, diff_after.calls) == (3, 2)
    assert "vispos_test_after" in HookRegistry.check_if_exists_or_initialize(m.rope).hooks


@torch.no_grad()
def test_a_look_alike_that_computes_something_else_is_refused():
    m = _hunyuan_like("HunyuanVideoTransformer3DModel")
    real = type(m.rope)

    class Shifted(real):  # same signature and attributes, different output
        def forward(self, hidden_states):
            c, s = super().forward(hidden_states)
            return c * 0.5, s

    m.rope.__class__ = Shifted
    with pytest.raises(ValueError, match="Hunyuan-style.*cannot adjust it safely"):
        vd.apply_rule(m, time={"name": "riflex", "k": 2}, num_frames=FRAMES)
    assert not m.rope._forward_hooks and getattr(m.rope, "_vispos_rule_handle", None) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls_name", ["WanTransformer3DModel", "SkyReelsV2Transformer3DModel"])
@torch.no_grad()
def test_half_precision_cast_wan_takes_riflex_and_undoes_bit_exactly(wan_ref, cls_name, dtype):
    """`.to(bfloat16)` casts the RoPE buffers; the adapter compares them in their own dtype, so they are accepted."""
    model = _wan_like(cls_name).to(dtype)
    assert model.rope.freqs_cos.dtype == dtype
    x = torch.zeros(1, 2, FRAMES, 1, 2, dtype=dtype)
    own, buf = model.rope(x), model.rope.freqs_cos
    rule = {"name": "riflex", "k": 1}
    with vd.apply_rule(model, time=rule, num_frames=FRAMES), vd.apply_rule(wan_ref, time=rule, num_frames=FRAMES):
        got = model.rope(x)
        assert got[0].dtype == dtype
        full = wan_ref.rope(torch.zeros(1, 2, FRAMES, 1, 2))  # float32 model under the same rule
        assert _same(got, [t.to(dtype) for t in full]) and not _same(got, own)
        out = model(x, timestep=torch.tensor([500]), encoder_hidden_states=torch.zeros(1, 3, 8, dtype=dtype),
                    return_dict=False)[0]
        assert out.dtype == dtype and torch.isfinite(out).all()
    assert model.rope.freqs_cos is buf and _same(model.rope(x), own)
    model.rope.freqs_cos = model.rope.freqs_cos * 2  # changed after construction: refused, naming the dtype
    with pytest.raises(ValueError, match=str(dtype)):
        vd.apply_rule(model, time=rule, num_frames=FRAMES)


def _official_riflex_freqs(dim, theta, k, L_test):
    """The official RIFLEx patch of get_1d_rotary_pos_embed (thu-ml/RIFLEx), written out: float32 bands, the
    k-th replaced by 0.9 2pi / L_test (training-free: L_test = L'; fine-tuned: L_test = N_k, fixed)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    freqs[k - 1] = 0.9 * 2 * torch.pi / L_test
    return freqs


@torch.no_grad()
def test_finetune_mode_equals_the_official_fine_tuned_riflex_at_every_length():
    model = _hunyuan_like("HunyuanVideoTransformer3DModel")  # time axis rope_dim 8: bands 256^(-j/4)
    k, n_k = 3, 40  # a checkpoint fine-tuned at 40 latent frames with k = 3
    for frames in (12, 40, 70):  # shorter than, at, and beyond the fine-tuning length: theta_k is the same
        x = torch.zeros(1, 2, frames, 1, 1)
        with vd.apply_rule(model, time={"name": "riflex", "mode": "finetune", "k": k}, train_frames=n_k) as h:
            cos, sin = model.rope(x)
            assert h.last_bands["time"][k - 1].item() == 0.9 * 2 * math.pi / n_k
        off = torch.outer(torch.arange(frames, dtype=torch.float32), _official_riflex_freqs(8, 256.0, k, n_k))
        assert torch.equal(cos[:, :8], off.cos().repeat_interleave(2, dim=1))
        assert torch.equal(sin[:, :8], off.sin().repeat_interleave(2, dim=1))
    with pytest.raises(ValueError, match="train_frames"):
        vd.apply_rule(model, time={"name": "riflex", "mode": "finetune", "k": k})


@torch.no_grad()
def test_unchecked_mode_is_the_official_code_without_the_check(wan_ref):
    """`WAN_COMMUNITY_RIFLEX` style: theta_k = 0.9 2pi / L' even where the checked rule leaves RoPE alone."""
    frames = 5  # t_dim 8: period of k = 2 is 63 > 5, so the checked rule does nothing here
    x = torch.zeros(1, 2, frames, 1, 1)
    ref = wan_ref.rope(x)
    with vd.apply_rule(wan_ref, time={"name": "riflex", "k": 2}, num_frames=frames):
        assert _same(wan_ref.rope(x), ref)
    with vd.apply_rule(wan_ref, time={"name": "riflex", "k": 2, "mode": "unchecked"}, num_frames=frames):
        cos = wan_ref.rope(x)[0][0, :, 0, :8]
    theta = torch.tensor(0.9 * 2 * math.pi / frames, dtype=torch.float64)  # Wan builds its bands in float64
    assert torch.equal(cos[:, 2], (torch.arange(frames, dtype=torch.float64) * theta).cos().float())
    assert not torch.equal(cos, ref[0][0, :, 0, :8])


def _cog15(head_dim=64):
    torch.manual_seed(0)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=head_dim, in_channels=2, out_channels=2, time_embed_dim=8,
        text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        patch_size_t=2, use_rotary_positional_embeddings=True).eval()


def _changed_k(bands, model_bands):
    diff = (bands != model_bands).nonzero().flatten().tolist()
    assert len(diff) <= 1
    return diff[0] + 1 if diff else None


@torch.no_grad()
def test_the_same_N_gives_the_same_k_in_the_cli_and_the_api():
    from vispos.freqs import rope_freqs
    from vispos.integrations.diffusers.report import riflex_table

    # CogVideoX 1.5 (dim_t 16, patch_size_t 2): N = 44 latent frames. Before, the API read N as 44 positions (k 3)
    frames = 60
    cli = riflex_table("cogvideox1.5", frames=frames, N=44)
    rope = vd.cogvideox_rotary_emb(_cog15(), frames, 4, 4, time={"name": "riflex", "N": 44})
    plain = vd.cogvideox_rotary_emb(_cog15(), frames, 4, 4)
    cols = [c for c in range(16) if not torch.equal(rope[0][:, c], plain[0][:, c])]
    assert cli["k"] == 2 and cols == [2 * (cli["k"] - 1), 2 * cli["k"] - 1]
    # HunyuanVideo's temporal RoPE (base 256, dim 16), N = 48 latent frames -> k = 4 in both
    m = _hunyuan_like("HunyuanVideoTransformer3DModel")
    m.rope.rope_dim = (16, 4, 4)
    cli = riflex_table("hunyuanvideo", frames=66, N=48)
    with vd.apply_rule(m, time={"name": "riflex", "N": 48}, num_frames=66) as h:
        m.rope(torch.zeros(1, 2, 66, 1, 1))
        assert _changed_k(h.last_bands["time"], rope_freqs(16, 256.0)) == cli["k"] == 4
    # in video frames (units="pixel") N converts like every other length: 189 = (48 - 1) * 4 + 1
    with vd.apply_rule(m, time={"name": "riflex", "N": 189}, num_frames=261, units="pixel") as h:
        m.rope(torch.zeros(1, 2, 66, 1, 1))
        assert _changed_k(h.last_bands["time"], rope_freqs(16, 256.0)) == 4


@torch.no_grad()
def test_explicit_frame_indices_framepack_and_helios():
    """FramePack (Hunyuan-style RoPE on given frame indices) and Helios (band buffers): the indices are the temporal
    positions, and the rule's L' is the largest index + 1."""
    torch.manual_seed(0)
    fp = diffusers.HunyuanVideoFramepackTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=1, guidance_embeds=False,
        text_embed_dim=8, pooled_projection_dim=8, rope_axes_dim=(8, 4, 4)).eval()
    helios = diffusers.HeliosTransformer3DModel(
        patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=16, in_channels=2, out_channels=2,
        text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1, rope_dim=(8, 4, 4)).eval()
    idx = torch.tensor([0, 1, 2, 9, 29])  # a clean prefix, a gap, the tail: L' = 30
    for model, k, new_of in ((fp, 2, lambda: min(256.0 ** (-2 / 8), 0.9 * 2 * math.pi / 30)),
                             (helios, 1, lambda: min(1.0, 0.9 * 2 * math.pi / 30))):
        ids = idx if model is fp else idx[None]  # Helios takes (B, T) indices

        def call(m, ids=ids):
            return m.rope(frame_indices=ids, height=2, width=2, device=torch.device("cpu"))

        ref = call(model)
        with vd.apply_rule(model, time="none") as h:
            assert _same(call(model), ref)
        with vd.apply_rule(model, time={"name": "riflex", "k": k}) as h:
            got = call(model)
            assert h.last_bands["time"][k - 1].item() == new_of()
            assert not _same(got, ref)
            if model is fp:  # the formula on the given positions, the host's other columns untouched
                pos = idx.float().repeat_interleave(4)
                expect = (pos * torch.tensor(new_of(), dtype=torch.float32)).cos()
                assert torch.equal(got[0][:, 2 * (k - 1)], expect) and torch.equal(got[0][:, 4:], ref[0][:, 4:])
            else:  # Helios: (B, 2 * 16, T, H, W), cos (t, y, x) then sin; the k-th band repeated for its pair
                expect = (idx.float() * torch.tensor(new_of(), dtype=torch.float32)).cos()
                assert torch.equal(got[0, 0, :, 0, 0], expect)
                assert torch.equal(got[0, 2:16], ref[0, 2:16]) and torch.equal(got[0, 18:], ref[0, 18:])
        assert _same(call(model), ref)
    with pytest.raises(ValueError, match="attn_factor=False"):
        vd.apply_rule(helios, time="yarn", train_frames=10)


@torch.no_grad()
def test_consisid_pipeline_rope_takes_riflex_like_cogvideox():
    """ConsisID builds RoPE in its pipeline exactly as CogVideoX 1.0 (no patch_size_t): the same adapter serves it."""
    import ast
    from pathlib import Path

    import diffusers.pipelines.consisid as pkg
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    src = (Path(pkg.__file__).parent / "pipeline_consisid.py").read_text()
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)
             and n.name in ("get_resize_crop_region_for_grid", "_prepare_rotary_positional_embeddings")]
    ns = {"torch": torch, "get_3d_rotary_pos_embed": get_3d_rotary_pos_embed}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "pipeline_consisid.py", "exec"), ns)

    class Pipe:  # the attributes ConsisIDPipeline's RoPE method reads (its text encoder is not needed)
        vae_scale_factor_spatial = 8
        _prepare_rotary_positional_embeddings = ns["_prepare_rotary_positional_embeddings"]

        def __init__(self, transformer):
            self.transformer = transformer

    torch.manual_seed(0)
    model = diffusers.ConsisIDTransformer3DModel(
        num_attention_heads=1, attention_head_dim=32, in_channels=2, out_channels=2, time_embed_dim=8,
        text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        use_rotary_positional_embeddings=True).eval()
    pipe = Pipe(model)
    ref = pipe._prepare_rotary_positional_embeddings(32, 48, 24, "cpu")
    with vd.apply_rule(pipe, time="none") as h:
        assert h.host == "cogvideox-pipeline" and _same(pipe._prepare_rotary_positional_embeddings(32, 48, 24, "cpu"),
                                                         ref)
    with vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, num_frames=24) as h:
        cos, _ = pipe._prepare_rotary_positional_embeddings(32, 48, 24, "cpu")
        pos = torch.linspace(0, 24 * 23 / 24, 24).repeat_interleave(6)
        assert torch.equal(cos[:, 0], torch.cos(pos * torch.tensor(0.9 * 2 * math.pi / 24, dtype=torch.float32)))
        assert torch.equal(cos[:, 2:], ref[0][:, 2:])
    assert _same(pipe._prepare_rotary_positional_embeddings(32, 48, 24, "cpu"), ref)
