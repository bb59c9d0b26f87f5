"""End-to-end tiny diffusers pipelines (random weights, tokenizers built offline), 2 steps past the training length
with and without a rule. Slow-ish (a VAE decode each): marked slow where over a few seconds."""
import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')
pytest.importorskip("transformers", reason='the pipelines need transformers: pip install "vispos[dev]"')

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

import vispos.integrations.diffusers as vd  # noqa: E402

WORDS = "a cat dog runs in the park at night red blue".split()


def tokenizer(max_len=16, bos=None):
    """A word-level tokenizer made in memory (no download): what the pipelines call is all it needs."""
    special = ["<pad>", "</s>", "<unk>"] + ([bos] if bos else [])
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_len, **extra)


def _t5(cls_name="UMT5EncoderModel", config="UMT5Config", d=8):
    import transformers

    cfg = getattr(transformers, config)(vocab_size=len(WORDS) + 4, d_model=d, d_kv=4, d_ff=8, num_layers=1,
                                         num_heads=2, relative_attention_num_buckets=4)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg).eval()


def _frames(out):
    return out.frames if hasattr(out, "frames") else out.images


def _wan_pipe():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                           latents_std=[1.0] * 4).eval()
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                               out_channels=4, text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1).eval()
    # attention_head_dim 12: t_dim 4, bands 1, 0.01 (periods 6, 628): 33 video frames = 9 latent > 6
    return WanPipeline(tokenizer=tokenizer(), text_encoder=_t5(), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=tr)


@pytest.fixture(scope="module")
def wan_pipe():
    return _wan_pipe()


def _run(pipe, **kw):
    args = dict(prompt="a cat runs in the park", negative_prompt="dog", num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return _frames(pipe(**args))


WAN = dict(height=16, width=16, num_frames=33, max_sequence_length=16)  # training length below: 9 video frames


@pytest.mark.slow
@torch.no_grad()
def test_wan_pipeline_past_training_length_with_and_without_a_rule(wan_pipe):
    plain = _run(wan_pipe, **WAN)
    assert plain.shape == (1, 33, 3, 16, 16)
    with vd.apply_rule(wan_pipe, time="none"):
        assert torch.equal(_run(wan_pipe, **WAN), plain)
    with vd.apply_rule(wan_pipe, time={"name": "riflex", "k": 1}, units="pixel", num_frames=33) as h:
        ext = _run(wan_pipe, **WAN)
        assert h.last_bands["time"][0].item() == 0.9 * 2 * torch.pi / 9
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    assert torch.equal(_run(wan_pipe, **WAN), plain)  # undone bit-exactly


@torch.no_grad()
def test_bf16_cast_wan_pipeline_takes_riflex_and_undoes_bit_exactly():
    pipe = _wan_pipe().to(torch.bfloat16)  # casts the RoPE buffers too
    assert pipe.transformer.rope.freqs_cos.dtype == torch.bfloat16
    buf = pipe.transformer.rope.freqs_cos
    kw = dict(WAN, output_type="latent")
    plain = _run(pipe, **kw)
    with vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, units="pixel", num_frames=33):
        ext = _run(pipe, **kw)
    assert ext.dtype == torch.bfloat16 and torch.isfinite(ext.float()).all() and not torch.equal(ext, plain)
    assert pipe.transformer.rope.freqs_cos is buf and torch.equal(_run(pipe, **kw), plain)
