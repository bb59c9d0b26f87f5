"""End-to-end tiny diffusers pipelines (random weights, tokenizers built offline), 2 steps past the training length
with and without a rule. Slow-ish (a VAE decode each): marked slow where over a few seconds."""
import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')
pytest.importorskip("transformers", reason='the pipelines need transformers: pip install "vispos[dev]"')

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.freqs import rope_freqs  # noqa: E402

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


def _flux_pipe():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=16,
                                        projection_dim=8, eos_token_id=1, bos_token_id=1, pad_token_id=0)).eval()
    t5 = _t5("T5EncoderModel", "T5Config")
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[4, 4], layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, sample_size=32, shift_factor=0.0,
                        scaling_factor=1.0).eval()
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=1, joint_attention_dim=8, pooled_projection_dim=8,
                                axes_dims_rope=(4, 6, 6)).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip,
                        tokenizer=tokenizer(), text_encoder_2=t5, tokenizer_2=tokenizer(), transformer=tr)


@pytest.mark.slow
@torch.no_grad()
def test_flux_pipeline_above_training_resolution_with_and_without_a_rule():
    pipe = _flux_pipe()
    kw = dict(height=96, width=64, max_sequence_length=16, guidance_scale=1.0)  # trained at 32 x 32 px here
    args = dict(prompt="a red cat", num_inference_steps=2, output_type="pt")

    def run():
        return _frames(pipe(**args, **kw, generator=torch.Generator().manual_seed(0)))

    plain = run()
    assert plain.shape[-2:] == (96, 64)
    with vd.apply_rule(pipe, space="none"):
        assert torch.equal(run(), plain)
    vae_s = pipe.vae_scale_factor  # 2 here (two VAE blocks); tokens = pixels / (2 * vae_s)
    with vd.apply_rule(pipe, space="yarn", train_height=32, train_width=32, units="pixel", vae_scale=(1, vae_s)) as h:
        ext = run()
        assert torch.equal(h.last_bands["height"][:1], torch.tensor([1.0], dtype=torch.float64))  # high band kept
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    with vd.apply_rule(pipe, space=vd.TimeAware("pi", "ntk_base"), train_height=32, train_width=32, units="pixel",
                       vae_scale=(1, vae_s)):
        timed = run()
    assert not torch.equal(timed, plain) and not torch.equal(timed, ext)
    assert torch.equal(run(), plain)


def _cog15_pipe():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4),
                                 latent_channels=2, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4).eval()
    # CogVideoX 1.5 layout (patch_size_t 2, "slice" grid); head dim 32: dim_t 8, bands 1, 0.1, ... (period 6)
    tr = CogVideoXTransformer3DModel(num_attention_heads=1, attention_head_dim=32, in_channels=2, out_channels=2,
                                     time_embed_dim=8, text_embed_dim=8, num_layers=1, sample_width=2,
                                     sample_height=2, sample_frames=9, patch_size=1, patch_size_t=2,
                                     use_rotary_positional_embeddings=True).eval()
    return CogVideoXPipeline(tokenizer=tokenizer(), text_encoder=_t5("T5EncoderModel", "T5Config"), vae=vae,
                             transformer=tr, scheduler=CogVideoXDDIMScheduler())


@pytest.mark.slow
@torch.no_grad()
def test_cogvideox15_pipeline_past_training_length_with_and_without_a_rule():
    pipe = _cog15_pipe()
    kw = dict(height=16, width=16, num_frames=49, max_sequence_length=16, guidance_scale=1.0,
              use_dynamic_cfg=False)  # 49 video frames = 13 latent (training length here: 9 video frames)
    args = dict(prompt="a cat runs", num_inference_steps=2, output_type="pt")

    def run():
        return _frames(pipe(**args, **kw, generator=torch.Generator().manual_seed(0)))

    plain = run()
    with vd.apply_rule(pipe, time="none"):
        assert torch.equal(run(), plain)
    with vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, num_frames=49, units="pixel") as h:
        ext = run()
        assert h.last_bands["time"][0].item() == 0.9 * 2 * torch.pi / 7  # ceil(13 / 2) = 7 positions > 6
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    assert torch.equal(run(), plain)


def _ltx_pipe():
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
        decoder_block_out_channels=(4, 4, 4, 4), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    tr = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=26,
                                    cross_attention_dim=26, num_layers=1, caption_channels=8).eval()
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5("T5EncoderModel",
                       "T5Config"), tokenizer=tokenizer(), transformer=tr)


@pytest.mark.slow
@torch.no_grad()
def test_ltx_pipeline_past_training_length_with_and_without_a_rule():
    pipe = _ltx_pipe()
    frames = 4 * 12 + 1  # this tiny VAE compresses time 4x: 12 + 1 latent frames
    kw = dict(height=32, width=32, num_frames=frames, max_sequence_length=16, guidance_scale=1.0)
    args = dict(prompt="a cat runs", num_inference_steps=2, output_type="pt")

    def run():
        return _frames(pipe(**args, **kw, generator=torch.Generator().manual_seed(0)))

    plain = run()
    with vd.apply_rule(pipe, time="none"):
        assert torch.equal(run(), plain)
    with vd.apply_rule(pipe, time={"name": "riflex", "k": 1}) as h:  # L' = the latent frames at each call
        ext = run()
        assert h.last_bands["time"].shape == (4,)
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    assert torch.equal(run(), plain)


def _hunyuan_pipe():
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(vocab_size=len(WORDS) + 4, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                                   num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256)).eval()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=77,
                                        projection_dim=8, eos_token_id=1, bos_token_id=1, pad_token_id=0)).eval()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=2, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        norm_num_groups=2, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=False,
    ).eval()
    tr = HunyuanVideoTransformer3DModel(
        in_channels=2, out_channels=2, num_attention_heads=1, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=1, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=8, pooled_projection_dim=8, rope_axes_dim=(8, 4, 4)).eval()
    return HunyuanVideoPipeline(text_encoder=llama, tokenizer=tokenizer(256), transformer=tr, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=clip,
                                tokenizer_2=tokenizer(77))


@pytest.mark.slow
@torch.no_grad()
def test_hunyuanvideo_pipeline_past_training_length_with_and_without_a_rule():
    pipe = _hunyuan_pipe()
    kw = dict(height=16, width=16, num_frames=4 * 29 + 1, max_sequence_length=16)  # 30 latent frames
    args = dict(prompt="a cat runs", num_inference_steps=2, output_type="pt")

    def run():
        return _frames(pipe(**args, **kw, generator=torch.Generator().manual_seed(0)))

    plain = run()
    with vd.apply_rule(pipe, time="none"):
        assert torch.equal(run(), plain)
    with vd.apply_rule(pipe, time="riflex", train_frames=15, num_frames=30) as h:  # k: smallest period >= 15
        ext = run()
        assert h.last_bands["time"][1].item() == min(0.25, 0.9 * 2 * torch.pi / 30)
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    assert torch.equal(run(), plain)


def _allegro_pipe():
    from diffusers import (
        AllegroPipeline,
        AllegroTransformer3DModel,
        AutoencoderKLAllegro,
        EulerAncestralDiscreteScheduler,
    )

    torch.manual_seed(0)
    # interpolation_scale (t, h, w) = (2.2, 2.0, 2.0), Allegro's: temporal band 1 per latent frame 1/2.2 (period 13.8)
    tr = AllegroTransformer3DModel(patch_size=2, patch_size_t=1, num_attention_heads=1, attention_head_dim=12,
                                   in_channels=4, out_channels=4, num_layers=1, cross_attention_dim=12,
                                   sample_height=4, sample_width=4, sample_frames=4, caption_channels=8).eval()
    vae = AutoencoderKLAllegro(block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=1,
                               latent_channels=4, sample_size=32).eval()
    return AllegroPipeline(tokenizer=tokenizer(), text_encoder=_t5("T5EncoderModel", "T5Config"), vae=vae,
                           transformer=tr, scheduler=EulerAncestralDiscreteScheduler())


@pytest.mark.slow
@torch.no_grad()
def test_allegro_pipeline_past_training_length_with_and_without_a_rule():
    """Prompt -> T5 -> the pipeline's own RoPE method -> transformer -> scheduler, 2 steps, 65 video frames (17
    latent, 4x the tiny config's 4); output_type="latent": Allegro's VAE decodes only in 120-px-overlap tiles, so the
    decode is left out (the rule acts before it)."""
    pipe = _allegro_pipe()

    def run(frames=65):
        out = pipe("a red cat", num_frames=frames, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
                   clean_caption=False, max_sequence_length=16, output_type="latent",
                   generator=torch.Generator().manual_seed(0))
        return _frames(out)

    plain = run()
    assert plain.shape == (1, 4, 17, 8, 8)
    with vd.apply_rule(pipe, time="none", space="none") as h:
        assert h.host == "allegro-pipeline" and torch.equal(run(), plain)
    with vd.apply_rule(pipe, time={"name": "riflex", "k": 1}, train_frames=4) as h:
        ext = run()
        assert torch.isclose(h.last_bands["time"][0], torch.tensor(0.9 * 2 * torch.pi / 17, dtype=torch.float64))
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    with vd.apply_rule(pipe, space="pi", train_height=32, train_width=32, units="pixel") as h:  # 2 -> 4 tokens
        wide = run()
        # per token position: b^(-2j/d) / 2.0 (Allegro's interpolation), then PI's / 2 (2 -> 4 tokens)
        assert torch.equal(h.last_bands["height"], rope_freqs(4, 10000.0) / 2.0 / 2.0)
    assert not torch.equal(wide, plain) and not torch.equal(wide, ext)
    assert torch.equal(run(), plain) and "_prepare_rotary_positional_embeddings" not in vars(pipe)


def _flux2_klein_pipe():
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tok = tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the pipeline applies one
    te = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(WORDS) + 4, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                      max_position_embeddings=32)).eval()
    vae = AutoencoderKLFlux2(block_out_channels=(4, 4), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=1,
                             norm_num_groups=1, sample_size=32, mid_block_add_attention=False).eval()
    # joint_attention_dim 24: three text-encoder layers of 8 stacked (text_encoder_out_layers below)
    tr = Flux2Transformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=1, joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4)).eval()
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te, tokenizer=tok,
                              transformer=tr)


@pytest.mark.slow
@torch.no_grad()
def test_flux2_pipeline_above_training_resolution_with_and_without_a_rule():
    pipe = _flux2_klein_pipe()
    kw = dict(height=96, width=64, max_sequence_length=16, guidance_scale=1.0, text_encoder_out_layers=(0, 1, 1))

    def run():
        return _frames(pipe(prompt="a red cat", num_inference_steps=2, output_type="pt",
                            generator=torch.Generator().manual_seed(0), **kw))

    plain = run()
    assert plain.shape[-2:] == (96, 64)
    with vd.apply_rule(pipe, space="none") as h:
        assert h.host == "ids4-style" and torch.equal(run(), plain)
    vae_s = pipe.vae_scale_factor  # 2 here; FLUX.2 packs 2x2 latents per token: tokens = pixels / (2 * vae_s)
    with vd.apply_rule(pipe, space="yarn", train_height=32, train_width=32, units="pixel", vae_scale=(1, vae_s)) as h:
        ext = run()
        assert h.axes["height"].train == 8.0 and h.last_bands["height"][0] == 1.0  # high band kept
    assert torch.isfinite(ext).all() and not torch.equal(ext, plain)
    with vd.apply_rule(pipe, space=vd.TimeAware("pi", "ntk_base"), train_height=32, train_width=32, units="pixel",
                       vae_scale=(1, vae_s)):
        timed = run()
    assert not torch.equal(timed, plain) and not torch.equal(timed, ext)
    assert torch.equal(run(), plain) and not pipe.transformer.pos_embed._forward_hooks
