"""apply_rule's train_frames default: the released training length of the host's checkpoint (as `vispos riflex`)."""
import logging

import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel  # noqa: E402

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.integrations.diffusers.report import HOSTS, riflex_table  # noqa: E402


def _hunyuan(cls=HunyuanVideoTransformer3DModel, t_dim=16):
    """Tiny random HunyuanVideo whose temporal RoPE is the released one (rope_theta 256, 16 temporal dims)."""
    torch.manual_seed(0)
    return cls(in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=t_dim + 8, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=1, patch_size_t=1,
               guidance_embeds=False, text_embed_dim=8, pooled_projection_dim=8, rope_theta=256.0,
               rope_axes_dim=(t_dim, 4, 4)).eval()


def _wan():
    """Tiny random Wan with the released head dim 128 (t_dim 44), one head, one layer."""
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 1, 1), num_attention_heads=1, attention_head_dim=128, in_channels=2,
                                 out_channels=2, text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1,
                                 rope_max_seq_len=256).eval()


@pytest.mark.parametrize("build,key", [(_hunyuan, "hunyuanvideo"), (_wan, "wan")])
@torch.no_grad()
def test_riflex_defaults_to_the_released_training_length(build, key, caplog):
    model = build()
    L = HOSTS[key].train
    assert vd.released_train_frames(vd.detect_host(model)[0], model)[:2] == (L, key)
    frames = 2 * L + 3
    x = torch.zeros(1, 2, frames, 1, 2)
    with caplog.at_level(logging.INFO, logger="vispos.integrations.diffusers"):
        with vd.apply_rule(model, time="riflex", num_frames=frames) as h:
            model.rope(x)
    assert h.axes["time"].train == L
    assert any(f"train_frames defaults to {L} latent frames" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
    # the same bands as the explicit released length, and the k that `vispos riflex` reports for this host
    with vd.apply_rule(model, time="riflex", num_frames=frames, train_frames=L) as h2:
        model.rope(x)
    assert torch.equal(h.last_bands["time"], h2.last_bands["time"])
    k = riflex_table(key, frames=frames)["k"]
    rel = HOSTS[key]
    host = rel.base ** (-torch.arange(0, rel.dim, 2, dtype=torch.float64) / rel.dim)
    changed = (~torch.isclose(h.last_bands["time"].double(), host, rtol=1e-6)).nonzero().flatten().tolist()
    assert changed == [k - 1]


@torch.no_grad()
def test_explicit_train_frames_overrides_the_default(caplog):
    model = _hunyuan()
    x = torch.zeros(1, 2, 60, 1, 2)
    with caplog.at_level(logging.INFO, logger="vispos.integrations.diffusers"):
        with vd.apply_rule(model, time="pi", num_frames=60, train_frames=20) as h:
            model.rope(x)
    assert h.axes["time"].train == 20
    assert not any("defaults to" in r.getMessage() for r in caplog.records)
    with vd.apply_rule(model, time="pi", num_frames=60) as h33:
        model.rope(x)
    assert h33.axes["time"].train == 33 and not torch.equal(h.last_bands["time"], h33.last_bands["time"])


def test_no_known_length_keeps_the_clear_error():
    with pytest.raises(ValueError, match="needs its training length: pass train_frames="):  # fine-tuning length
        vd.apply_rule(_hunyuan(), time={"name": "riflex", "mode": "finetune", "k": 4}, num_frames=70)
    class OtherHunyuan(HunyuanVideoTransformer3DModel):  # same RoPE, another model (e.g. HunyuanVideo 1.5)
        pass

    for model in (OtherHunyuan(**dict(_hunyuan().config)), _hunyuan(t_dim=8)):  # other class / other RoPE size
        assert vd.released_train_frames(vd.detect_host(model)[0], model) is None
        with pytest.raises(ValueError, match="needs its training length: pass train_frames="):
            vd.apply_rule(model, time="riflex", num_frames=70)
