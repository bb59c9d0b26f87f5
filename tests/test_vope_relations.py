"""What the docs say about VoPE: interpolated RoPE up to a shift; not plain RoPE with prefix tokens; DINOv3 scale."""
import torch

from vispos.grid import GridLayout, grid_coords
from vispos.pe.rope import AxialRoPE, VoPE


def _logits(pe, layout, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, layout.num_tokens, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, layout.num_tokens, D, generator=g, dtype=torch.float64)
    q2, k2 = pe(q.float(), k.float(), layout)
    return (q2.double() @ k2.double().transpose(-1, -2))


def test_vope_is_interpolated_rope_up_to_a_shift_and_not_plain_rope_with_prefix():
    train = (4, 6)
    for shape in ((4, 6), (6, 10), (3, 8)):
        lay = GridLayout(shape, num_prefix=1)
        vope = _logits(VoPE(16, 2, train_shape=train), lay)
        interp = _logits(AxialRoPE(16, 2, coords="interpolated", train_shape=train), lay)
        # patch-to-patch scores are equal (a constant shift per axis), prefix rows/columns are not
        torch.testing.assert_close(vope[..., 1:, 1:], interp[..., 1:, 1:], atol=1e-5, rtol=1e-5)
        assert (vope[..., 0, 1:] - interp[..., 0, 1:]).abs().max() > 1e-2
        # interpolated RoPE on explicitly shifted positions gives VoPE exactly, prefix included
        pos = tuple(tuple((p + 0.5 - s / 2) * r / s for p in range(s)) for s, r in zip(shape, train))
        shifted = _logits(AxialRoPE(16, 2, train_shape=train), GridLayout(shape, 1, positions=pos))
        torch.testing.assert_close(vope, shifted, atol=1e-5, rtol=1e-5)
    # at the training grid: equal to plain RoPE between patches, different for the class token
    lay = GridLayout(train, num_prefix=1)
    vope, plain = _logits(VoPE(16, 2, train_shape=train), lay), _logits(AxialRoPE(16, 2, train_shape=train), lay)
    torch.testing.assert_close(vope[..., 1:, 1:], plain[..., 1:, 1:], atol=1e-5, rtol=1e-5)
    assert (vope[..., 0, 1:] - plain[..., 0, 1:]).abs().max() > 1e-2


def test_dinov3_coordinates_are_normalized_times_a_constant():
    shape, ref = (5, 7), (5, 7)
    c = grid_coords(shape, "normalized", ref, dtype=torch.float64)
    ys, xs = torch.meshgrid(*[(torch.arange(s, dtype=torch.float64) + 0.5) / s * 2 - 1 for s in shape],
                            indexing="ij")
    dino = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1)  # DINOv3 'separate': cell centres in [-1, 1]
    torch.testing.assert_close(dino, c * torch.tensor([2 / r for r in ref], dtype=torch.float64))
