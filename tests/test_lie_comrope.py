"""LieRE and ComRoPE: skew-symmetric generators, orthogonal rotations, commuting generators give offset-only scores
(as rope_axial), LieRE's in general do not; block size 2 reproduces rope_mixed / rope_axial exactly."""
import pytest
import torch

import vispos
from vispos.grid import GridLayout
from vispos.pe.comrope import ComRoPE
from vispos.pe.lie_rope import LieRE
from vispos.pe.rope import AxialRoPE, MixedRoPE

J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)


def _score(pe, q, k, pq, pk, index=0):
    """q at position pq, k at pk (explicit single-token layouts)."""
    lq = GridLayout((1,) * len(pq), positions=tuple((float(v),) for v in pq))
    lk = GridLayout((1,) * len(pk), positions=tuple((float(v),) for v in pk))
    a, _ = pe(q, q, lq, index)
    b, _ = pe(k, k, lk, index)
    return (a * b).sum(-1)


def _noisy(cls, ndim, **kw):
    torch.manual_seed(0)
    pe = cls(16, 2, 2, ndim, init_noise=0.3, dtype=torch.float64, **kw)
    return pe


@pytest.mark.parametrize("ndim", [2, 3])
def test_liere_generators_skew_and_rotations_orthogonal(ndim):
    pe = _noisy(LieRE, ndim, block_size=8)
    A = pe.generators(1)
    assert A.shape == (ndim, 2, 2, 8, 8)
    torch.testing.assert_close(A, -A.transpose(-1, -2))
    R = pe.rotations((3, 4) if ndim == 2 else (2, 3, 2), 1)
    eye = torch.eye(8, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=torch.float64))
    # R(p) = exp(sum_i p_i A_i) for one token
    p = torch.tensor([2.0, 3.0] if ndim == 2 else [1.0, 2.0, 1.0], dtype=torch.float64)
    tok = 11  # (2, 3) of a 3x4 grid, (1, 2, 1) of a 2x3x2 grid
    c = vispos.grid_coords((3, 4) if ndim == 2 else (2, 3, 2), dtype=torch.float64)[tok]
    assert torch.equal(c, p)
    ref = torch.linalg.matrix_exp(torch.einsum("a,ahkij->hkij", p, A))
    torch.testing.assert_close(R[:, tok], ref)


def test_liere_noncommuting_scores_depend_on_absolute_position():
    pe = _noisy(LieRE, 2, block_size=8)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 2, 1, 16, generator=g,
                                                                                 dtype=torch.float64)
    s1, s2 = _score(pe, q, k, (0, 0), (1, 2)), _score(pe, q, k, (3, 1), (4, 3))
    assert (s1 - s2).abs().max() > 1e-3


@pytest.mark.parametrize("mode,ndim", [("ld", 2), ("ld", 3), ("ap", 2), ("ap", 3)])
def test_comrope_generators_commute_and_scores_depend_only_on_offsets(mode, ndim):
    pe = _noisy(ComRoPE, ndim, mode=mode, block_size=8 if ndim == 2 else 12 if mode == "ap" else 8) \
        if not (mode == "ap" and ndim == 3) else None
    if pe is None:  # ap in 3D needs a block multiple of 6: head dim 24
        torch.manual_seed(0)
        pe = ComRoPE(24, 2, 2, 3, mode="ap", block_size=12, init_noise=0.3, dtype=torch.float64)
    A = pe.generators(0)
    torch.testing.assert_close(A, -A.transpose(-1, -2))
    for i in range(ndim):
        for j in range(ndim):
            torch.testing.assert_close(A[i] @ A[j], A[j] @ A[i], atol=1e-12, rtol=0)
    D = pe.head_dim
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, 1, D, generator=g, dtype=torch.float64), torch.randn(1, 2, 1, D, generator=g,
                                                                                 dtype=torch.float64)
    off = (1, 2, -1)[:ndim]
    for base in [(0, 0, 0), (3, 1, 2), (-2, 5, 7)]:
        pq = base[:ndim]
        pk = tuple(a + b for a, b in zip(pq, off))
        torch.testing.assert_close(_score(pe, q, k, pq, pk), _score(pe, q, k, (0,) * ndim, off), atol=1e-10,
                                   rtol=0)


def test_block_size_two_reproduces_rope_mixed_and_rope_axial():
    torch.manual_seed(0)
    D, H, L = 16, 2, 2
    mixed = MixedRoPE(D, L, H, 2, dtype=torch.float64)
    lie = LieRE(D, L, H, 2, block_size=2, dtype=torch.float64)
    with torch.no_grad():  # generator of pair j = f[a, l, h, j] * J (interleaved pairing)
        lie.weight.copy_(mixed.freqs.permute(1, 0, 2, 3)[..., None, None] * J)
    lay = GridLayout((3, 5), 1)
    q, k = torch.randn(2, H, 16, D, dtype=torch.float64), torch.randn(2, H, 16, D, dtype=torch.float64)
    for idx in (0, 1):
        for a, b in zip(lie(q, k, lay, idx), mixed(q, k, lay, idx)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # ComRoPE-LD with 2x2 blocks: s_i = the axial band of the pair on its own axis, 0 on the other
    axial = AxialRoPE(D, 2, base=100.0)
    freqs = axial.get_freqs((3, 5))  # two axes, D/4 bands each
    com = ComRoPE(D, 1, H, 2, mode="ld", block_size=2, dtype=torch.float64)
    s = torch.zeros(1, 2, H, D // 2, dtype=torch.float64)
    s[0, 0, :, : D // 4] = freqs[0]
    s[0, 1, :, D // 4:] = freqs[1]
    with torch.no_grad():
        com.weight.copy_(J.expand(1, H, D // 2, 2, 2))
        com.scales.copy_(s)
    for a, b in zip(com(q, k, lay), axial(q, k, lay)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_prefix_untouched_grads_and_errors():
    pe = vispos.build_pe("comrope", dim=32, num_heads=2, depth=2, grid=(3, 3))
    q = torch.randn(1, 2, 10, 16, requires_grad=True)
    q2, k2 = pe(q, q, GridLayout((3, 3), 1), 1)
    assert torch.equal(q2[:, :, 0], q[:, :, 0])
    (q2.sum() + k2.pow(2).sum()).backward()
    assert pe.weight.grad.abs().sum() > 0 and pe.scales.grad.abs().sum() > 0
    lie = vispos.build_pe("lie_rope", dim=32, num_heads=2, depth=2, grid=(2, 3, 3))
    assert lie.ndims == (3,) and lie.block_size == 16
    with pytest.raises(ValueError, match="block_size"):
        LieRE(16, 1, 2, 2, block_size=6)
    with pytest.raises(ValueError, match="mode"):
        ComRoPE(16, 1, 2, 2, mode="xy")
    with pytest.raises(ValueError, match="multiple of 6"):
        ComRoPE(16, 1, 2, 3, mode="ap", block_size=8)
    with pytest.raises(ValueError, match="depth"):
        vispos.build_pe("lie_rope", dim=32, num_heads=2, grid=(3, 3))
    with pytest.raises(ValueError, match="layer index"):
        pe(q, q, GridLayout((3, 3), 1), 2)
