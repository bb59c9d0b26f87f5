"""timm integration: every PE in timm ViTs / EVAs, checkpoint conversion, parity with timm, ordinary-model behaviour."""
import logging

import pytest
import timm
import torch

import vispos
from vispos.integrations import timm as vt

VIT = "vit_tiny_patch16_224"
TINY = dict(depth=2, img_size=32, num_classes=5)
SIZES = [(32, 32), (48, 32), (64, 64)]  # training size, rectangular, larger square
PE_2D = [info.name for info in vispos.list_pes() if 2 in info.ndims]
COMBOS = [["ape", "rope_axial"], ["rope_mixed", "peg"], ["ape", "lape"]]


def _id(pe):
    return "+".join(pe) if isinstance(pe, list) else pe


@torch.no_grad()
def _randomize(model, std=0.1):
    """Large random weights so that positions visibly change outputs (timm's init makes attention near uniform)."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=g) * std)
        else:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _layout_seen(model, x):
    """The layout the first block receives in a forward of ``x`` (it travels in the call's PECall)."""
    seen = []

    def grab(mod, args, kwargs):
        seen.extend(a.layout for a in (*args, *kwargs.values()) if isinstance(a, vt.PECall))

    h = model.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.forward_features(x)
    finally:
        h.remove()
    assert len(seen) == 1
    return seen[0]


def _pe_params(model):
    return {n: p for n, p in model.named_parameters() if n.startswith("pe.")}


# ---- every PE, three sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pe", PE_2D + COMBOS, ids=_id)
def test_every_pe_forward_backward_three_sizes(pe):
    model = vispos.create_model(VIT, pe=pe, dynamic_img_size=True, **TINY)
    params = _pe_params(model)
    assert not any(n.startswith("pos_embed") for n, _ in model.named_parameters())
    for size in SIZES:
        model.zero_grad()
        x = torch.randn(2, 3, *size)
        y = model(x)
        assert y.shape == (2, 5)
        assert torch.isfinite(y).all()
        y.square().sum().backward()
        for n, p in params.items():
            assert p.grad is not None, f"{n}: no gradient at {size}"
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("pe", ["rope_mixed", ["ape", "lape"], "rel_decomposed", "glpe"], ids=_id)
def test_gradients_are_nonzero_somewhere(pe):
    model = _randomize(vispos.create_model(VIT, pe=pe, **TINY))
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    params = _pe_params(model)
    assert params
    assert any(p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize("pe", [["ape", "rope_axial"], ["glpe", "rel_decomposed", "peg"]], ids=_id)
def test_set_input_size(pe):
    model = vispos.create_model(VIT, pe=pe, **TINY)
    model.set_input_size(img_size=(48, 32))
    assert model.patch_embed.grid_size == (3, 2)
    y = model(torch.randn(1, 3, 48, 32))
    assert y.shape == (1, 5)
    with pytest.raises(ValueError, match="differs from the model"):  # static models take their input size only
        model(torch.randn(1, 3, 32, 32))


# ---- prefix-token variants -------------------------------------------------------------------------------------
VARIANTS = {
    "distilled": ("deit_tiny_distilled_patch16_224", dict(), 2),
    "reg4": (VIT, dict(reg_tokens=4), 5),
    "no_embed_class": (VIT, dict(no_embed_class=True, reg_tokens=2), 3),
    "no_class_token_avg": (VIT, dict(class_token=False, global_pool="avg"), 0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("pe", [["ape", "rope_axial"], ["glpe", "rel_decomposed", "peg"]], ids=_id)
def test_prefix_variants(variant, pe):
    name, kw, n_prefix = VARIANTS[variant]
    model = vispos.create_model(name, pe=pe, dynamic_img_size=True, **TINY, **kw)
    assert model.num_prefix_tokens == n_prefix
    x = torch.randn(2, 3, 48, 32)
    f = model.forward_features(x)
    assert f.shape == (2, n_prefix + 3 * 2, 192)
    model.forward_head(f).sum().backward()
    assert all(p.grad is not None for p in _pe_params(model).values())
    assert _layout_seen(model, x).num_prefix == n_prefix


# ---- checkpoints: parity with timm -----------------------------------------------------------------------------
def _timm_ckpt(tmp_path, name=VIT, **kw):
    plain = _randomize(timm.create_model(name, **{**TINY, **kw})).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(plain.state_dict(), path)
    return plain, str(path)


@pytest.mark.parametrize("variant", ["plain", "distilled", "no_embed_class", "no_class_token_avg"])
def test_ape_from_timm_checkpoint_equals_timm(tmp_path, variant, caplog):
    name, kw, _ = VARIANTS.get(variant, (VIT, {}, 1))
    plain, path = _timm_ckpt(tmp_path, name, **kw)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="vispos.integrations.timm"):
        # timm's pretrained machinery with a local file ...
        a = vispos.create_model(name, pe="ape", pretrained=True, **TINY, **kw,
                                pretrained_cfg_overlay=dict(file=path, num_classes=5)).eval()
    assert any("pos_embed" in r.getMessage() and "-> pe.pos_embed" in r.getMessage() for r in caplog.records)
    # ... and checkpoint_path=
    b = vispos.create_model(name, pe="ape", checkpoint_path=path, **TINY, **kw).eval()
    with torch.no_grad():
        ref = plain(x)
        assert (ref.std() > 0.1).item()
        for m in (a, b):
            torch.testing.assert_close(m(x), ref, atol=1e-6, rtol=0)
            torch.testing.assert_close(m.pe.pos_embed, plain.pos_embed, atol=0, rtol=0)


def test_ape_other_grid_follows_timm_resampling(tmp_path):
    plain, path = _timm_ckpt(tmp_path)
    # timm at a rectangular size, its own loader resamples pos_embed from the 2x2 checkpoint grid
    ref_model = timm.create_model(VIT, pretrained=True, **{**TINY, "img_size": (64, 48)},
                                  pretrained_cfg_overlay=dict(file=path, num_classes=5)).eval()
    ours = vispos.create_model(VIT, pe="ape", checkpoint_path=path, **{**TINY, "img_size": (64, 48)}).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours.pe.pos_embed, ref_model.pos_embed, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), ref_model(x), atol=1e-4, rtol=1e-4)
    # dynamic_img_size: the PE resamples at forward time like timm does
    dyn_ref = timm.create_model(VIT, dynamic_img_size=True, **TINY).eval()
    dyn_ref.load_state_dict(plain.state_dict())
    dyn = vispos.create_model(VIT, pe="ape", checkpoint_path=path, dynamic_img_size=True, **TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), dyn_ref(x), atol=1e-4, rtol=1e-4)


def test_ape_rope_keeps_every_non_pe_weight(tmp_path, caplog):
    plain, path = _timm_ckpt(tmp_path)
    with caplog.at_level(logging.INFO, logger="vispos.integrations.timm"):
        model = vispos.create_model(VIT, pe=["ape", "rope_axial"], checkpoint_path=path, **TINY)
    sd, ref = model.state_dict(), plain.state_dict()
    # + the rotary member's recorded reference grids (a plain tensor entry, see docs/timm.md)
    assert set(sd) == (set(ref) - {"pos_embed"}) | {"pe.pes.0.pos_embed", "pe.pes.1.ref_grid"}
    for k, v in ref.items():
        if k != "pos_embed":
            assert torch.equal(sd[k], v), k
    assert torch.equal(sd["pe.pes.0.pos_embed"], ref["pos_embed"])
    # rope changes the function (it is really applied)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model.forward_features(x) - plain.forward_features(x)).abs().max() > 1e-2


@pytest.mark.parametrize("pe", [["ape", "peg"], ["ape", "rel_decomposed"]], ids=_id)
def test_identity_initialised_pe_keeps_pretrained_output(tmp_path, pe, caplog):
    plain, path = _timm_ckpt(tmp_path)
    with caplog.at_level(logging.INFO, logger="vispos.integrations.timm"):
        model = vispos.create_model(VIT, pe=pe, checkpoint_path=path, **TINY).eval()
    new = [r.getMessage() for r in caplog.records if r.getMessage().startswith("new pe.")]
    assert new and all("pos_embed" not in m for m in new)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # same function; rel_decomposed folds its (zero) bias into extra q/k columns: float noise
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)


def test_strict_report_on_bad_checkpoint(tmp_path):
    plain, _ = _timm_ckpt(tmp_path)
    sd = plain.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match=r"missing keys \['head.bias'\].*unexpected keys \['extra.weight'\]"):
        vispos.create_model(VIT, pe="ape", checkpoint_path=str(path), **TINY)
    model = vispos.create_model(VIT, pe="ape", checkpoint_path=str(path), strict=False, **TINY)
    assert torch.equal(model.pe.pos_embed, plain.pos_embed)


# ---- EVA family: vispos RoPE == timm RoPE ------------------------------------------------------------------------
EVAS = [
    ("eva02_tiny_patch14_224", ["ape", "rope_axial"], 56),  # APE + axial RoPE (interpolated to a 16x16 ref grid)
    ("vit_medium_patch16_rope_reg1_gap_256", "rope_axial", 64),  # register token, avg pool, no APE
    ("vit_small_patch16_rope_mixed_ape_224", ["ape", "rope_mixed"], 64),  # AttentionRope, learned freqs
]


@pytest.mark.parametrize("name,pe,size", EVAS, ids=[e[0] for e in EVAS])
def test_eva_rope_equals_timm_rope(tmp_path, name, pe, size):
    plain, path = _timm_ckpt(tmp_path, name, img_size=size, dynamic_img_size=True)
    model = vispos.create_model(name, pe=pe, checkpoint_path=path, **{**TINY, "img_size": size},
                                dynamic_img_size=True).eval()
    assert model.rope is None and getattr(model, "pos_embed", None) is None
    ps = model.patch_embed.patch_size
    for hw in [(size, size), (3 * ps[0], 5 * ps[1])]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            ref = plain.forward_features(x)
            torch.testing.assert_close(model.forward_features(x), ref, atol=2e-5, rtol=1e-5)
    # negative control: another RoPE setting changes the output (the rope is really applied)
    if "rope_axial" in (pe if isinstance(pe, list) else [pe]):
        kw = dict(rope_axial=dict(base=100.0)) if isinstance(pe, list) else dict(base=100.0)
        other = vispos.create_model(name, pe=pe, pe_kwargs=kw, checkpoint_path=path,
                                    **{**TINY, "img_size": size}).eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert (other.forward_features(x) - plain.forward_features(x)).abs().max() > 1e-2


def test_eva_explicit_settings_match_inherited(tmp_path):
    name = "eva02_tiny_patch14_224"
    plain, path = _timm_ckpt(tmp_path, name, img_size=56)
    kw = dict(rope_axial=dict(base=10000.0, coords="interpolated", ref_shape=(16, 16), pairing="interleaved"))
    model = vispos.create_model(name, pe=["ape", "rope_axial"], pe_kwargs=kw, checkpoint_path=path,
                                **{**TINY, "img_size": 56}).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)


# ---- an ordinary timm model --------------------------------------------------------------------------------------
def test_compile_equals_eager_no_recompile():
    import torch._dynamo as dynamo

    model = _randomize(vispos.create_model(VIT, pe=["ape", "rope_axial"], **{**TINY, "depth": 1})).eval()
    x = torch.randn(1, 3, 32, 32)
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: any graph break fails
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
        with dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(compiled(x + 1), model(x + 1), atol=1e-5, rtol=1e-5)
    dynamo.reset()


@pytest.mark.parametrize("pe", [["ape", "rope_mixed", "peg"], ["ape", "lape"], ["glpe", "rel_decomposed"]], ids=_id)
def test_state_dict_round_trip(tmp_path, pe):
    a = _randomize(vispos.create_model(VIT, pe=pe, **TINY)).eval()
    path = tmp_path / "vispos.pth"
    torch.save(a.state_dict(), path)
    b = vispos.create_model(VIT, pe=pe, **TINY).eval()
    b.load_state_dict(torch.load(path), strict=True)
    c = vispos.create_model(VIT, pe=pe, checkpoint_path=str(path), **TINY).eval()  # vispos-format checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ya = a(x)
        assert torch.equal(b(x), ya) and torch.equal(c(x), ya)


def test_timm_api_surface():
    model = vispos.create_model(VIT, pe=["ape", "rope_mixed"], **TINY)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert model.forward_head(feats).shape == (2, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 2 and inter[0].shape == (2, 192, 2, 2) and final.shape == feats.shape
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    nwd = model.no_weight_decay()
    assert {"pe.pes.1.freqs", "pe.pes.0.pos_embed", "cls_token"} <= nwd
    assert r"^pe\." in model.group_matcher()["stem"]
    import copy

    twin = copy.deepcopy(model)  # EMA copies: the PE is registered once, and the copy's forward uses its own
    assert twin.pe is not model.pe and sum(1 for n, _ in twin.named_modules() if n.endswith("pe")) == 1
    assert torch.equal(twin.eval()(x), model.eval()(x))
    m64 = model.to(torch.float64)
    assert m64(x.double()).dtype == torch.float64


@pytest.mark.parametrize("pe", [["ape", "rope_axial"], ["rope_mixed", "peg"], ["ape", "lape"]], ids=_id)
def test_meta_init_then_to_empty(pe):
    model = vispos.create_model(VIT, pe=pe, device="meta", **TINY)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    y = model(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(y).all()


def test_timm_create_model_entrypoints(tmp_path):
    name = vt.timm_entrypoint_name(VIT)
    assert name == "vispos_" + VIT and name in timm.list_models(module="vispos")
    model = timm.create_model(name, pe="rope_axial", **TINY)
    assert type(model).__name__ == "VisposVisionTransformer" and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # pretrained-config machinery: a tag of the timm model and a local file
    plain, path = _timm_ckpt(tmp_path)
    m = timm.create_model(name + ".augreg_in21k", pe="ape", pretrained=True, **TINY,
                          pretrained_cfg_overlay=dict(file=path, num_classes=5)).eval()
    assert m.pretrained_cfg["tag"] == "augreg_in21k"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="needs pe="):
        timm.create_model(name, **TINY)


# ---- errors ----------------------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(TypeError, match="supported timm model classes"):
        vispos.create_model("resnet18", pe="ape")
    with pytest.raises(TypeError, match="needs pe="):
        vispos.create_model(VIT, **TINY)
    with pytest.raises(TypeError, match="pe must be"):
        vispos.create_model(VIT, pe=3, **TINY)
    with pytest.raises(TypeError, match="pe_kwargs must be a dict"):
        vispos.create_model(VIT, pe="ape", pe_kwargs=[1], **TINY)
    with pytest.raises(ValueError, match="unknown PE 'nope'"):
        vispos.create_model(VIT, pe="nope", **TINY)
    with pytest.raises(ValueError, match="patch dropout"):
        vispos.create_model(VIT, pe="rope_axial", patch_drop_rate=0.5, **TINY)
    with pytest.raises(ValueError, match="without the 'vispos_' prefix"):
        vispos.create_model("vispos_" + VIT, pe="ape", **TINY)
    model = vispos.create_model(VIT, pe="ape", patch_drop_rate=0.5, **TINY)  # token-only PE: fine
    model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="already carries a vispos PE"):
        vt.install_pe(model, "rope_axial")
    with pytest.raises(ValueError, match="attention DiffAttention"):
        vispos.create_model(VIT, pe="rope_axial", attn_layer="diff", **TINY)
    with pytest.raises(ValueError, match="incompatible PE combination"):
        vispos.create_model(VIT, pe=["rope_axial", "rope_mixed"], **TINY)


def test_install_pe_on_existing_model_and_attn_mask():
    plain = _randomize(timm.create_model(VIT, **TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = plain(x)
    model = vt.install_pe(plain, "ape")
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=0)
        mask = torch.zeros(5, 5)
        torch.testing.assert_close(model.forward_features(x, attn_mask=mask), model.forward_features(x),
                                   atol=1e-6, rtol=0)
    rel = vispos.create_model(VIT, pe="rel_decomposed", **TINY)
    with pytest.raises(ValueError, match="attn_mask / is_causal"):
        rel.forward_features(x, attn_mask=torch.zeros(5, 5))


@pytest.mark.parametrize("pe", ["ape", ("ape", "peg"), ("ape", "rel_decomposed")])
def test_timm_create_model_checkpoint_path_converts(tmp_path, pe):
    """timm.create_model('vispos_...', checkpoint_path=timm_ckpt) loads through timm's own loader: the PE is
    converted on load (pos_embed -> the ape member, identity-initialised new parameters), outputs unchanged."""
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=5).eval()
    path = tmp_path / "timm.pth"
    torch.save(plain.state_dict(), path)
    m = timm.create_model("vispos_vit_tiny_patch16_224", pe=list(pe) if isinstance(pe, tuple) else pe, depth=2,
                          img_size=32, patch_size=8, num_classes=5, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), plain(x), atol=1e-5, rtol=1e-5)


def test_vispos_checkpoint_reloads_at_another_size(tmp_path):
    """A saved vispos model (APE + rel-pos tables at a 4x4 grid) loads into one built for 6x6: tables resampled."""
    torch.manual_seed(0)
    a = vispos.create_model("vit_tiny_patch16_224", pe=["ape", "rel_decomposed"], depth=2, img_size=32,
                            patch_size=8, num_classes=5).eval()
    with torch.no_grad():
        for p in a.pe.parameters():
            p.normal_()
    path = tmp_path / "v.pth"
    torch.save(a.state_dict(), path)
    b = vispos.create_model("vit_tiny_patch16_224", pe=["ape", "rel_decomposed"], depth=2, img_size=48,
                            patch_size=8, num_classes=5, checkpoint_path=str(path)).eval()
    from vispos.pe.absolute import resample_abs_pe

    ape_a, ape_b = a.pe.pes[0].pos_embed, b.pe.pes[0].pos_embed
    torch.testing.assert_close(ape_b, resample_abs_pe(ape_a, (6, 6), (4, 4), 1, "bicubic", True))
    assert b.pe.pes[1].layers[0].rel_pos_h.shape[0] == 11 and a.pe.pes[1].layers[0].rel_pos_h.shape[0] == 7


@pytest.mark.parametrize("pe", PE_2D + COMBOS, ids=_id)
def test_every_pe_parameter_gets_a_nonzero_gradient_at_every_size(pe):
    """With average pooling every patch token reaches the loss, so every PE parameter (zero-initialised parts made
    non-zero first) must get a non-zero gradient at the training size and at the other sizes: a detached table or a
    cache that cuts the graph would fail here."""
    model = _randomize(vispos.create_model(VIT, pe=pe, dynamic_img_size=True, global_pool="avg", class_token=False,
                                           **TINY))
    params = _pe_params(model)
    for size in SIZES:
        model.zero_grad()
        model(torch.randn(2, 3, *size)).square().sum().backward()
        for n, p in params.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n}: zero gradient at {size}"


@pytest.mark.parametrize("pe", [["ape", "lape"], "rope_mixed", ["glpe", "rel_decomposed"], "vope"], ids=_id)
def test_compile_training_mode_rectangular_gradients(pe):
    """Training mode, a rectangular non-training size, gradients: compiled == eager, no graph break, no recompile."""
    import torch._dynamo as dynamo

    model = _randomize(vispos.create_model(VIT, pe=pe, dynamic_img_size=True, **{**TINY, "depth": 1})).train()
    x = torch.randn(2, 3, 48, 32)
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_c = compiled(x)
    y_e = model(x)
    torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=1e-5)
    params = _pe_params(model)
    g_c = torch.autograd.grad(y_c.square().sum(), list(params.values()), allow_unused=True) if params else []
    g_e = torch.autograd.grad(y_e.square().sum(), list(params.values()), allow_unused=True) if params else []
    for a, b in zip(g_c, g_e):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with dynamo.config.patch(error_on_recompile=True):
        compiled(x + 1)
    dynamo.reset()
