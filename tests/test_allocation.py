"""3D frequency allocations of rope_axial against their references: Qwen2-VL M-RoPE and Qwen3-VL interleaved M-RoPE
(transformers' position and rotary code), VideoRoPE and HoPE (the official repositories' assignment, re-expressed),
head-wise, p-RoPE, temporal stride."""
import pytest
import torch

import vispos
from vispos.grid import GridLayout
from vispos.pe.rope import AxialRoPE, allocation_axes, p_rope_keep

pytest.importorskip("transformers")
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLRotaryEmbedding  # noqa: E402
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig  # noqa: E402
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLTextRotaryEmbedding  # noqa: E402

D, BASE = 64, 10000.0
SHAPE = (3, 4, 5)


def _hf_table(rot_cls, cfg_cls, model_cls, sections, stride):
    cfg = cfg_cls(hidden_size=D * 2, num_attention_heads=2, head_dim=D,
                  rope_parameters={"rope_type": "default", "rope_theta": BASE, "mrope_section": list(sections)})
    # transformers' own vision position ids (no text before the video: start_position 0)
    pos = model_cls.get_vision_position_ids(None, 0, torch.tensor(SHAPE), time_interval=stride)
    cos, sin = rot_cls(cfg)(torch.zeros(1, pos.shape[1], D), pos[:, None, :])
    return cos[0, :, : D // 2].double(), sin[0, :, : D // 2].double()


@pytest.mark.parametrize("stride", [1, 2])
def test_mrope_equals_qwen2_vl(stride):
    dims = (16, 24, 24)  # mrope_section (8, 12, 12) pairs
    pe = AxialRoPE(D, dims=dims, base=BASE, pairing="half", allocation="mrope", temporal_stride=float(stride))
    cos, sin = pe.build_table(GridLayout(SHAPE))
    hc, hs = _hf_table(Qwen2VLRotaryEmbedding, Qwen2VLTextConfig, Qwen2VLModel, [8, 12, 12], stride)
    torch.testing.assert_close(cos.double(), hc, atol=2e-6, rtol=0)
    torch.testing.assert_close(sin.double(), hs, atol=2e-6, rtol=0)


def test_mrope_interleaved_equals_qwen3_vl():
    dims = (24, 20, 20)  # Qwen3-VL's [24, 20, 20] at head dim 128, halved: sections (12, 10, 10)
    pe = AxialRoPE(D, dims=dims, base=BASE, pairing="half", allocation="mrope_interleaved")
    cos, sin = pe.build_table(GridLayout(SHAPE))
    hc, hs = _hf_table(Qwen3VLTextRotaryEmbedding, Qwen3VLTextConfig, Qwen3VLModel, [12, 10, 10], 1)
    torch.testing.assert_close(cos.double(), hc, atol=2e-6, rtol=0)
    torch.testing.assert_close(sin.double(), hs, atol=2e-6, rtol=0)
    axes = allocation_axes("mrope_interleaved", dims)
    assert axes[:6] == (0, 1, 2, 0, 1, 2) and axes[-2:] == (0, 0) and axes.count(0) == 12


def _videorope_reference(sections, stride, hope=False):
    """VideoRoPE (Wiselnn570/VideoRoPE ``get_t_scale_rope_index`` + ``apply_m_modify_multimodal_rotary_pos_emb``)
    and HoPE (hrlics/HoPE ``apply_hybrid_multimodal_rotary_pos_emb``), re-expressed for a video with no text."""
    T, H, W = SHAPE
    t = torch.arange(T).view(-1, 1).expand(-1, H * W).flatten().double() * stride
    h = torch.arange(H).view(1, -1, 1).expand(T, -1, W).flatten() - (H - 1) // 2 + t
    w = torch.arange(W).view(1, 1, -1).expand(T, H, -1).flatten() - (W - 1) // 2 + t
    pos = torch.stack([t, h, w])  # (3, N)
    inv = 1.0 / (BASE ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    emb = torch.cat([pos[..., None] * inv, pos[..., None] * inv], dim=-1)  # (3, N, D), rows t, h, w
    cos, sin = emb.cos(), emb.sin()
    secs = [sections[0], sections[1] + sections[2]] * 2
    secs = secs[::-1]  # spatial (interleaved) first, then temporal, for each half
    out_c, out_s, index = [], [], 0
    for i, sec in enumerate(secs):
        if i % 2 == 0:
            for j in range(sec):
                row = 1 if j % 2 == 0 else 2
                out_c.append(cos[row, :, index:index + 1])
                out_s.append(sin[row, :, index:index + 1])
                index += 1
        else:
            out_c.append(torch.ones_like(cos[0, :, index:index + sec]) if hope else cos[0, :, index:index + sec])
            out_s.append(torch.zeros_like(sin[0, :, index:index + sec]) if hope else sin[0, :, index:index + sec])
            index += sec
    return torch.cat(out_c, -1)[:, : D // 2], torch.cat(out_s, -1)[:, : D // 2]


@pytest.mark.parametrize("allocation,stride", [("videorope", None), ("videorope", 1.0), ("hope", 1.0),
                                               ("hope", 1.5)])
def test_videorope_and_hope_equal_the_official_assignment(allocation, stride):
    dims = (16, 24, 24)
    pe = AxialRoPE(D, dims=dims, base=BASE, pairing="half", allocation=allocation, temporal_stride=stride)
    cos, sin = pe.build_table(GridLayout(SHAPE))
    rc, rs = _videorope_reference((8, 12, 12), pe.temporal_stride, hope=allocation == "hope")
    assert pe.temporal_stride == (2.0 if stride is None else stride)  # VideoRoPE's default spacing is 2
    torch.testing.assert_close(cos.double(), rc, atol=2e-6, rtol=0)
    torch.testing.assert_close(sin.double(), rs, atol=2e-6, rtol=0)


def test_hope_dynamic_temporal_scaling_draws_in_training_only():
    pe = AxialRoPE(D, dims=(16, 24, 24), base=BASE, allocation="hope", temporal_scales=(0.5, 1.5))
    q = torch.randn(1, 2, 60, D)
    torch.manual_seed(0)
    outs = {tuple(pe.train()(q, q, SHAPE)[0][0, 0, -1].tolist()) for _ in range(12)}  # last frame's token
    assert len(outs) == 2  # two scales drawn
    a, b = pe.eval()(q, q, SHAPE)[0], pe.eval()(q, q, SHAPE)[0]
    torch.testing.assert_close(a, b)


def test_headwise_heads_carry_one_axis():
    pe = vispos.build_pe("rope_axial", dim=6 * D, num_heads=6, grid=SHAPE, allocation="headwise", base=BASE)
    cos, sin = pe.build_table(GridLayout(SHAPE, 1))
    assert cos.shape == (6, 61, D // 2)
    from vispos.grid import grid_coords

    c = grid_coords(SHAPE, dtype=torch.float64)
    theta = torch.tensor(vispos.rope_freqs(D, BASE).tolist(), dtype=torch.float64)
    for h in range(6):
        ang = c[:, h // 2, None] * theta
        torch.testing.assert_close(cos[h, 1:].double(), ang.cos(), atol=2e-6, rtol=0)
    assert (cos[:, 0] == 1).all()  # prefix untouched
    q = torch.randn(2, 6, 61, D)
    q2, _ = pe(q, q, GridLayout(SHAPE, 1))
    assert q2.shape == q.shape


@pytest.mark.parametrize("allocation", ["mrope", "mrope_interleaved", "videorope", "hope", "headwise"])
def test_scores_depend_only_on_offsets(allocation):
    # a 3D translation of both tokens leaves every allocation's score unchanged
    pe = AxialRoPE(D, dims=(24, 20, 20), base=BASE, allocation=allocation, num_heads=3)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 3, 1, D, generator=g), torch.randn(1, 3, 1, D, generator=g)

    def score(pq, pk):
        lq = GridLayout((1, 1, 1), positions=tuple((float(v),) for v in pq))
        lk = GridLayout((1, 1, 1), positions=tuple((float(v),) for v in pk))
        a, _ = pe(q, q, lq)
        b, _ = pe(k, k, lk)
        return (a * b).sum(-1)

    s1 = score((1, 2, 3), (3, 0, 1))
    s2 = score((4, 7, 5), (6, 5, 3))
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)


def test_p_rope():
    assert p_rope_keep(8, 0.75) == (True,) * 6 + (False,) * 2
    pe = AxialRoPE(16, 2, base=100.0, p_rope=0.5)
    cos, sin = pe.build_table(GridLayout((4, 4)))
    # each axis keeps its 2 highest of 4 bands; the lowest two are unrotated (cos 1, sin 0)
    assert (sin[:, 2:4] == 0).all() and (sin[:, 6:8] == 0).all() and (sin[:, :2].abs() > 0).any()
    full = AxialRoPE(16, 2, base=100.0).build_table(GridLayout((4, 4)))[0]
    torch.testing.assert_close(cos[:, :2], full[:, :2])
    vr = AxialRoPE(D, dims=(16, 24, 24), base=BASE, allocation="videorope", p_rope=0.75)
    s = vr.build_table(GridLayout(SHAPE))[1]
    assert (s[:, 24:] == 0).all() and (s[:, :24].abs() > 0).any()


def test_allocation_errors():
    with pytest.raises(ValueError, match="allocation"):
        AxialRoPE(D, dims=(16, 24, 24), allocation="diagonal")
    with pytest.raises(ValueError, match="3D"):
        AxialRoPE(16, 2, allocation="mrope")
    with pytest.raises(ValueError, match="scaling rules"):
        AxialRoPE(D, dims=(16, 24, 24), allocation="mrope", rules="pi")
    with pytest.raises(ValueError, match="num_heads"):
        AxialRoPE(D, dims=(16, 24, 24), allocation="headwise")
    with pytest.raises(ValueError, match="p_rope"):
        AxialRoPE(16, 2, p_rope=1.5)
    with pytest.raises(ValueError, match="temporal_stride"):
        AxialRoPE(D, dims=(16, 24, 24), allocation="videorope", temporal_stride=0)
    with pytest.raises(ValueError, match="equal h and w"):
        AxialRoPE(D, dims=(16, 20, 28), allocation="mrope_interleaved")


def test_hope_stride_drawn_once_per_forward_via_prepare():
    pe = AxialRoPE(D, dims=(16, 24, 24), base=BASE, allocation="hope", temporal_scales=(0.5, 1.0, 1.5)).train()
    q = torch.randn(1, 2, 60, D)
    torch.manual_seed(1)
    outs = set()
    for _ in range(8):
        lay = pe.prepare(q, GridLayout(SHAPE))
        a, b = pe(q, q, lay, 0)[0], pe(q, q, lay, 1)[0]  # two layers of one forward: one stride
        torch.testing.assert_close(a, b)
        outs.add(tuple(a[0, 0, -1].tolist()))
    assert len(outs) > 1  # but it changes across forwards


def test_rope_mixed_temporal_stride():
    torch.manual_seed(0)
    m = vispos.build_pe("rope_mixed", dim=2 * 12, num_heads=2, depth=1, grid=(3, 2, 2), temporal_stride=2.0)
    torch.manual_seed(0)
    ref = vispos.build_pe("rope_mixed", dim=2 * 12, num_heads=2, depth=1, grid=(3, 2, 2))
    torch.testing.assert_close(m.freqs, ref.freqs)
    q = torch.randn(1, 2, 13, 12)
    lay = GridLayout((3, 2, 2), 1)
    pos = GridLayout((3, 2, 2), 1, positions=((0.0, 2.0, 4.0), None, None))
    for a, b in zip(m(q, q, lay), ref(q, q, pos)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="temporal_stride"):
        vispos.build_pe("rope_mixed", dim=24, num_heads=2, depth=1, grid=(4, 4), temporal_stride=2.0)
