"""VideoDiT: every 3D PE through the hooks, both attention layouts, temporal rules."""
import pytest
import torch

import vispos
from vispos.freqs import RULES
from vispos.grid import GridLayout
from vispos.models import VideoDiT

PE_3D = sorted(info.name for info in vispos.list_pes() if 3 in info.ndims)
SIZE = (4, 8, 8)  # T, H, W  -> token grid (4, 2, 2) with patch (1, 4, 4)


def _randomise(model: VideoDiT, seed: int = 0) -> VideoDiT:
    """adaLN-zero makes a fresh model the identity-to-zero map: give the zero-initialised layers small weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [model.final, model.final_adaLN[1]] + [b.adaLN[1] for b in model.blocks]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model


def _model(pe, attention="full", **kw):
    torch.manual_seed(0)
    kw.setdefault("dim", 48)  # ape_sincos 3D needs dim % 16 == 0
    kw.setdefault("num_heads", 4)  # head_dim 12: divisible by 6 (rope_mixed 3D)
    return _randomise(VideoDiT(3, SIZE, (1, 4, 4), depth=2, attention=attention, pe=pe, **kw))


def test_3d_pes_are_listed():
    # the DiT must serve every 3D PE the registry knows; at least the foundation's RoPE family is there
    assert {"rope_axial", "vope", "rope_mixed"} <= set(PE_3D)


@pytest.mark.parametrize("attention", ["full", "alternating"])
@pytest.mark.parametrize("pe", PE_3D)
def test_forward_backward_every_3d_pe_two_lengths(pe, attention):
    m = _model(pe, attention)
    assert m.pe is not None and 3 in m.pe.ndims
    for T in (4, 8):  # training length and twice it
        m.zero_grad()
        x = torch.randn(2, 3, T, 8, 8)
        out = m(x, torch.rand(2))
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert m.x_embed.weight.grad.abs().sum() > 0
        for name, p in m.pe.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{pe}: PE parameter {name} gets no gradient"


@pytest.mark.parametrize("pe", PE_3D)
def test_pe_changes_the_output(pe):
    """The PE reaches the model: the same weights without it give another output."""
    m = _model(pe)
    x, t = torch.randn(1, 3, 4, 8, 8), torch.rand(1)
    with torch.no_grad():
        for p in m.pe.parameters():  # some PEs start at zero (SAM rel-pos tables, PEG-like convs)
            p.add_(torch.randn_like(p) * 0.1)
        a = m(x, t)
        saved = m.pe
        m.pe = None
        b = m(x, t)
        m.pe = saved
    assert not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("attention", ["full", "alternating"])
def test_rules_at_training_length_leave_the_model_unchanged(attention):
    m = _model("rope_axial", attention, pe_kwargs=dict(dims=(4, 4, 4), base=10.0))
    info = m.temporal_info()
    assert info["default_k"] >= 1
    x, t = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
    with torch.no_grad():
        ref = m(x, t)
        for rule in RULES:
            m.set_temporal_rule(rule)  # riflex: library default k
            assert torch.equal(m(x, t), ref), rule
        # at twice the length the rules do act (so the test above can fail)
        x2 = torch.randn(2, 3, 8, 8, 8)
        m.set_temporal_rule("none")
        plain = m(x2, t)
        for rule in ("pi", "ntk", "yarn", "riflex"):
            m.set_temporal_rule(rule)
            assert not torch.allclose(m(x2, t), plain, atol=1e-6), rule
        m.set_temporal_rule("none")
        assert torch.equal(m(x2, t), plain)


def test_set_temporal_rule_keeps_spatial_rules_and_takes_k():
    m = _model("rope_axial", pe_kwargs=dict(dims=(4, 4, 4), base=10.0, rules=(None, "pi", "pi")))
    r = m.set_temporal_rule("riflex", k=2, gamma=1.0)
    rope = m.temporal_rope()
    assert rope.rules[0] is r and r.k == 2 and r.gamma == 1.0
    assert [x.name for x in rope.rules[1:]] == ["pi", "pi"]
    with pytest.raises(ValueError, match="unknown scaling rule"):
        m.set_temporal_rule("bogus")


@pytest.mark.parametrize("pe", ["rope_mixed", "ape_sincos"])
def test_temporal_rule_needs_axial_rope(pe):
    if pe not in PE_3D:
        pytest.fail(f"{pe} is not registered as a 3D PE")
    m = _model(pe)
    m.set_temporal_rule("none")  # accepted: nothing to change
    with pytest.raises(ValueError, match="axial 3D RoPE"):
        m.set_temporal_rule("pi")


def test_alternating_sub_layouts_are_exact_for_rope():
    """A spatial block with the (1, H, W) sub-grid equals attention with the frame's true temporal position."""
    m = _model("rope_axial", "alternating", pe_kwargs=dict(dims=(4, 4, 4), base=10.0))
    rope, attn = m.pe, m.blocks[0].attn
    x = torch.randn(1, 4, 48)  # one frame: 4 tokens of a 2x2 grid
    with torch.no_grad():
        sub = attn(x, GridLayout((1, 2, 2)), rope, 0)
        for t in (0.0, 3.0, 7.0):
            full = attn(x, GridLayout((1, 2, 2), positions=((t,), None, None)), rope, 0)
            torch.testing.assert_close(sub, full, rtol=1e-5, atol=1e-6)
        # temporal blocks: (T', 1, 1) equals any fixed spatial location
        xt = torch.randn(1, 4, 48)
        sub = attn(xt, GridLayout((4, 1, 1)), rope, 1)
        full = attn(xt, GridLayout((4, 1, 1), positions=(None, (1.0,), (1.0,))), rope, 1)
        torch.testing.assert_close(sub, full, rtol=1e-5, atol=1e-6)


def test_alternating_differs_from_full_and_uses_time():
    x, t = torch.randn(1, 3, 4, 8, 8), torch.rand(1)
    full, alt = _model("rope_axial", "full"), _model("rope_axial", "alternating")
    alt.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert not torch.allclose(full(x, t), alt(x, t), atol=1e-6)
        # reversing time changes the output: temporal blocks see the temporal RoPE
        assert not torch.allclose(alt(x.flip(2), t).flip(2), alt(x, t), atol=1e-6)


def test_class_conditioning_and_patchify_roundtrip():
    m = _model("rope_axial", num_classes=3)
    x = torch.randn(2, 3, 4, 8, 8)
    with torch.no_grad():
        a = m(x, torch.rand(2), torch.tensor([0, 1]))
        assert a.shape == x.shape
        assert m(x, torch.full((2,), 0.5)).shape == x.shape  # y=None -> the "no class" label
    # unpatchify inverts a patchify done with an identity-like conv
    tok = torch.arange(2 * 16 * 48, dtype=torch.float32).reshape(2, 16, 48)
    v = m.unpatchify(tok, (4, 2, 2))
    assert v.shape == (2, 3, 4, 8, 8)
    assert v[0, :, 0, :4, :4].permute(1, 2, 0).reshape(-1).tolist() == tok[0, 0].tolist()


def test_bad_inputs_raise_before_work():
    m = _model("rope_axial")
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 2, 4, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="multiples of the patch"):
        m(torch.randn(1, 3, 4, 9, 8), torch.rand(1))
    with pytest.raises(ValueError, match="t must be"):
        m(torch.randn(2, 3, 4, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="num_classes=0"):
        m(torch.randn(1, 3, 4, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="attention"):
        VideoDiT(3, SIZE, (1, 4, 4), dim=24, num_heads=2, attention="sparse")
    with pytest.raises(ValueError, match="not divisible by patch"):
        VideoDiT(3, (4, 9, 8), (1, 4, 4), dim=24, num_heads=2)
    with pytest.raises(ValueError, match="unknown PE"):
        VideoDiT(3, SIZE, (1, 4, 4), dim=24, num_heads=2, pe="nope")
