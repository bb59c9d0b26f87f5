"""What a conversion cannot reproduce is a WARNING on every loading route; the conventions timm users rely on:
layer-wise lr decay groups, local-dir round trip, features_only."""
import logging

import pytest
import timm
import torch

import vispos

KW = dict(embed_dim=64, depth=2, num_heads=2, img_size=64)
LOGGER = "vispos.integrations.timm"


def _warned(caplog, route):
    return [r for r in caplog.records if r.levelno == logging.WARNING and route in r.getMessage()
            and "not reproduced" in r.getMessage()]


@pytest.fixture
def axial_ckpt(tmp_path):
    m = timm.create_model("vit_small_patch16_rope_224", **KW)
    path = tmp_path / "rope.pth"
    torch.save(m.state_dict(), path)
    return m, path


def test_unreproduced_scheme_warns_on_every_route(axial_ckpt, caplog):
    plain, path = axial_ckpt
    name = "vit_small_patch16_rope_224"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vispos.create_model(name, pe="rope_mixed", checkpoint_path=str(path), **KW)  # vispos checkpoint_path=
        assert _warned(caplog, "conversion")
        caplog.clear()
        timm.create_model(f"vispos_{name}", pe="rope_mixed", pretrained=True,  # pretrained=True
                          pretrained_cfg_overlay=dict(file=str(path)), **KW)
        assert _warned(caplog, "conversion")
        caplog.clear()
        timm.create_model(f"vispos_{name}", pe="rope_mixed", checkpoint_path=str(path), **KW)  # timm's route
        assert _warned(caplog, "load_state_dict")
        caplog.clear()
        m = vispos.create_model(name, pe="rope_mixed", **KW)
        m.load_state_dict(plain.state_dict())  # load_state_dict
        assert _warned(caplog, "load_state_dict")
        caplog.clear()
        # the reproducible scheme: no warning on any route
        vispos.create_model(name, pe="rope_axial", checkpoint_path=str(path), **KW)
        timm.create_model(f"vispos_{name}", pe="rope_axial", checkpoint_path=str(path), **KW)
        assert not [r for r in caplog.records if "not reproduced" in r.getMessage()]


def _lr_scales(model, decay=0.65):
    from timm.optim import param_groups_layer_decay

    names = dict((id(p), n) for n, p in model.named_parameters())
    out = {}
    for g in param_groups_layer_decay(model, weight_decay=0.0, layer_decay=decay):
        for p in g["params"]:
            out[names[id(p)]] = g["lr_scale"]
    return out


def test_layer_decay_groups_rel_pos_with_its_block_as_samvit():
    """timm's samvit puts blocks.<i>.attn.rel_pos_* in block i's group; vispos' rel_decomposed tables
    (pe.layers.<i>.rel_pos_*) land in the same group, with the same lr scale, at the same depth."""
    sam = timm.create_model("samvit_base_patch16", img_size=64, embed_dim=64, depth=3, num_heads=2,
                            global_attn_indexes=(), window_size=0, neck_chans=8)
    ours = vispos.create_model("vit_base_patch16_224", pe="rel_decomposed", img_size=64, embed_dim=64, depth=3,
                               num_heads=2, class_token=False, global_pool="avg")
    s_sam, s_ours = _lr_scales(sam), _lr_scales(ours)
    for i in range(3):
        assert s_ours[f"pe.layers.{i}.rel_pos_h"] == s_ours[f"blocks.{i}.attn.qkv.weight"]
        assert s_sam[f"blocks.{i}.attn.rel_pos_h"] == s_sam[f"blocks.{i}.attn.qkv.weight"]
        assert s_ours[f"pe.layers.{i}.rel_pos_w"] == s_sam[f"blocks.{i}.attn.rel_pos_w"]
    assert s_ours["blocks.0.attn.qkv.weight"] < s_ours["blocks.2.attn.qkv.weight"]


def test_layer_decay_other_pe_params():
    m = vispos.create_model("vit_base_patch16_224", pe="lape", **KW)
    s = _lr_scales(m)
    assert s["pe.norms.1.weight"] == s["blocks.1.attn.qkv.weight"]
    assert s["pe.base.pos_embed"] == s["patch_embed.proj.weight"]  # stem
    mixed = vispos.create_model("vit_base_patch16_224", pe="rope_mixed", **KW)
    s = _lr_scales(mixed)
    assert s["pe.freqs"] == 1.0  # every block's frequencies: ungrouped, as timm's EVA rope.freqs
    eva = timm.create_model("vit_small_patch16_rope_mixed_224", **KW)
    assert _lr_scales(eva)["rope.freqs"] == 1.0


@pytest.mark.parametrize("pe", ["rope_axial", ["ape", "rope_mixed"], "vope"])
def test_save_for_hf_then_local_dir_rebuilds_the_vispos_model(pe, tmp_path):
    m = vispos.create_model("vit_base_patch16_224", pe=pe, pe_kwargs={"base": 50.0} if pe == "vope" else None,
                            **KW).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    timm.models.save_for_hf(m, str(tmp_path))
    back = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert type(back) is type(m) and back.pe.name == m.pe.name
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_features_only():
    m = timm.create_model("vispos_vit_base_patch16_224", pe=["ape", "rope_axial"], features_only=True,
                          out_indices=(0, 1), **KW)
    plain = timm.create_model("vit_base_patch16_224", features_only=True, out_indices=(0, 1), **KW)
    feats = m(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in feats] == [f.shape for f in plain(torch.randn(2, 3, 64, 64))]
    assert m.feature_info.channels() == plain.feature_info.channels()
    rope = [n for n, _ in m.named_modules() if n.endswith("pe")]
    assert rope, "the PE must live inside the feature model"


def test_list_models_lists_twins_with_pretrained_tags():
    twins = timm.list_models("vispos_vit_base_patch16_224*", pretrained=True)
    base = timm.list_models("vit_base_patch16_224*", pretrained=True)
    assert twins and sorted(twins) == sorted(f"vispos_{n}" for n in base)
    from timm.models import get_pretrained_cfg

    tag = base[0].split(".", 1)[1]
    # the twin's pretrained config points at the base's weights, not at a (non-existent) vispos hub repo
    assert get_pretrained_cfg(f"vispos_vit_base_patch16_224.{tag}").hf_hub_id == \
        get_pretrained_cfg(f"vit_base_patch16_224.{tag}").hf_hub_id


def test_vispos_checkpoint_through_pretrained_cfg_overlay(tmp_path):
    m = vispos.create_model("vit_base_patch16_224", pe=["ape", "rope_mixed"], **KW).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "vispos.pth"
    torch.save(m.state_dict(), path)
    back = timm.create_model("vispos_vit_base_patch16_224", pe=["ape", "rope_mixed"], pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)), **KW).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
