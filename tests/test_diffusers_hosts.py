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
