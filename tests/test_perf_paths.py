"""Fast paths equal their references: RoPE (fast torch, Triton) and decomposed rel-pos attention (fold, chunked)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vispos.grid import GridLayout
from vispos.ops import attention as A
from vispos.ops.attention import DecomposedBias, sdpa, select_bias_impl
from vispos.ops.rope import apply_rope, apply_rope_qk, select_rope_impl
from vispos.ops.rope_fast import RopeQKFunction, complex_viewable, packed_pair, rotate_qk

PAIRINGS = ("interleaved", "half")


def _packed(B, H, N, D, dtype=torch.float32, device="cpu"):
    x = torch.randn(B, N, 3, H, D, dtype=dtype, device=device, requires_grad=True)
    q, k, _ = x.permute(2, 0, 3, 1, 4).unbind(0)
    return x, q, k


def _tables(shape, device="cpu", dtype=torch.float32):
    ang = (torch.rand(shape, device=device, dtype=torch.float64) * 12 - 6).to(dtype).requires_grad_(True)
    return ang, ang.cos(), ang.sin()


def check_matches_reference(fn, B, H, N, D, pairing, per_head, dtype=torch.float32, device="cpu", prefix=0):
    x, q, k = _packed(B, H, N, D, dtype, device)
    ang, c, s = _tables((H, N, D // 2) if per_head else (N, D // 2), device)
    if prefix:  # prefix rows: angle 0
        c = torch.cat([torch.ones_like(c[..., :prefix, :]), c[..., prefix:, :]], -2)
        s = torch.cat([torch.zeros_like(s[..., :prefix, :]), s[..., prefix:, :]], -2)
    qo, ko = fn(q, k, c, s, pairing)
    qr, kr = apply_rope(q, c, s, pairing), apply_rope(k, c, s, pairing)
    gq, gk = torch.randn_like(qr), torch.randn_like(kr)
    g = torch.autograd.grad((qo * gq).float().sum() + (ko * gk).float().sum(), (x, ang), retain_graph=True)
    gr = torch.autograd.grad((qr * gq).float().sum() + (kr * gk).float().sum(), (x, ang))
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(qo, qr, atol=atol, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    torch.testing.assert_close(ko, kr, atol=atol, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    torch.testing.assert_close(g[0], gr[0], atol=atol, rtol=1e-4 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(g[1], gr[1], atol=1e-4 * B * H, rtol=1e-4 if dtype == torch.float32 else 2e-2)
    if prefix:
        torch.testing.assert_close(qo[..., :prefix, :], q[..., :prefix, :], atol=0, rtol=0)


# ---- RoPE, fast torch path ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_rope_matches_reference(pairing, per_head, dtype):
    check_matches_reference(lambda *a: apply_rope_qk(*a, impl="fast"), 2, 3, 7, 12, pairing, per_head, dtype, prefix=1)


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_fast_rope_separate_and_odd_offset_inputs(pairing):
    """Inputs that cannot be viewed as complex (odd storage offset) and q/k from different storages."""
    base = torch.randn(2, 3, 5, 17)
    q = base[..., 1:]  # odd offset: the interleaved path takes the real-arithmetic branch
    k = torch.randn(2, 3, 5, 16)
    assert not complex_viewable(q) and complex_viewable(k) and packed_pair(q, k) is None
    _, c, s = _tables((5, 8))
    qo, ko = apply_rope_qk(q, k, c.detach(), s.detach(), pairing, impl="fast")
    torch.testing.assert_close(qo, apply_rope(q, c, s, pairing), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ko, apply_rope(k, c, s, pairing), atol=1e-6, rtol=1e-5)


def test_packed_pair_is_a_view_of_qkv():
    _, q, k = _packed(2, 3, 5, 8)
    both = packed_pair(q, k)
    assert both is not None and both.data_ptr() == q.data_ptr()
    torch.testing.assert_close(both[0], q, atol=0, rtol=0)
    torch.testing.assert_close(both[1], k, atol=0, rtol=0)
    assert packed_pair(k, q) is None  # k before q in memory: handled one by one


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_fast_rope_gradcheck(pairing):
    """float64 gradcheck of the hand-written backward (inputs and tables)."""
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    ang = torch.randn(2, 3, 2, dtype=torch.float64)
    c, s = ang.cos().requires_grad_(True), ang.sin().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: RopeQKFunction.apply(*t, pairing, rotate_qk), (q, k, c, s))


def test_rope_dispatch_is_explicit(monkeypatch):
    _, q, k = _packed(1, 2, 3, 4)
    c, s = torch.ones(3, 2), torch.zeros(3, 2)
    assert select_rope_impl(q, k, c, s) == "fast"
    assert select_rope_impl(q, k, c, s, "reference") == "reference"
    with pytest.raises(ValueError, match="impl='triton' needs"):
        select_rope_impl(q, k, c, s, "triton")
    with pytest.raises(ValueError, match="unknown RoPE impl"):
        select_rope_impl(q, k, c, s, "nope")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert select_rope_impl(q, k, c, s) == "reference"


# ---- RoPE, Triton (interpreter on CPU; compiled on CUDA) -----------------------------------------------------------
_INTERP = textwrap.dedent("""
    import torch, sys
    sys.path.insert(0, {root!r})
    from vispos.ops.rope_triton import rope_qk_triton, triton_supported
    from vispos.ops.rope import apply_rope
    torch.manual_seed(0)
    for pairing in ("interleaved", "half"):
        for shape in ((5, 6), (2, 5, 6)):  # shared and per-head tables; D/2 = 6 is not a power of two
            x = torch.randn(2, 5, 3, 2, 12, requires_grad=True)
            q, k, _ = x.permute(2, 0, 3, 1, 4).unbind(0)
            ang = torch.randn(shape, requires_grad=True)
            c, s = ang.cos(), ang.sin()
            assert triton_supported(q, k, c, s, interpret=True)
            qo, ko = rope_qk_triton(q, k, c, s, pairing)
            qr, kr = apply_rope(q, c, s, pairing), apply_rope(k, c, s, pairing)
            g = torch.randn_like(qr)
            ga = torch.autograd.grad((qo * g).sum() + (ko * g).sum(), (x, ang), retain_graph=True)
            gb = torch.autograd.grad((qr * g).sum() + (kr * g).sum(), (x, ang))
            torch.testing.assert_close(qo, qr, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ko, kr, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ga[0], gb[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ga[1], gb[1], atol=1e-4, rtol=1e-4)
    print("TRITON-INTERPRETER-OK")
""")


def test_triton_rope_kernel_under_interpreter():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", _INTERP.format(root=root)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "TRITON-INTERPRETER-OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rope_matches_reference_cuda(pairing, per_head, dtype):
    _, q, k = _packed(1, 2, 3, 4, device="cuda")
    assert select_rope_impl(q, k, torch.ones(3, 2, device="cuda"), torch.zeros(3, 2, device="cuda")) == "triton"
    check_matches_reference(lambda *a: apply_rope_qk(*a, impl="triton"), 2, 3, 70, 64, pairing, per_head, dtype, device="cuda",
             prefix=1)
    check_matches_reference(lambda *a: apply_rope_qk(*a, impl="triton"), 1, 2, 9, 88, pairing, per_head, dtype, device="cuda")


# ---- decomposed relative position -----------------------------------------------------------------------------------
def _relpos_case(grid, prefix, B=2, H=2, D=8, dtype=torch.float64):
    lay = GridLayout(grid, num_prefix=prefix)
    N = lay.num_tokens
    q, k, v = (torch.randn(B, H, N, D, dtype=dtype, requires_grad=True) for _ in range(3))
    ng = 1
    for s in grid:
        ng *= s
    fs = [torch.randn(B, H, ng, s, dtype=dtype, requires_grad=True) for s in grid]
    return lay, q, k, v, fs


@pytest.mark.parametrize("grid,prefix", [((4, 5), 0), ((3, 4), 1), ((2, 3, 4), 2)])
@pytest.mark.parametrize("impl", ["fold", "chunked", "auto"])
def test_relpos_paths_match_dense(grid, prefix, impl):
    lay, q, k, v, fs = _relpos_case(grid, prefix)
    leaves = (q, k, v, *fs)
    ref = sdpa(q, k, v, DecomposedBias(fs, lay, lay), impl="dense")
    out = sdpa(q, k, v, DecomposedBias(fs, lay, lay), impl=impl, chunk_size=7)
    g = torch.randn_like(ref)
    gr = torch.autograd.grad((ref * g).sum(), leaves)
    go = torch.autograd.grad((out * g).sum(), leaves)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    for a, b in zip(go, gr):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_chunked_never_holds_more_than_a_chunk(monkeypatch):
    lay, q, k, v, fs = _relpos_case((4, 5), 1)
    sizes = []
    orig = DecomposedBias.dense_rows

    def spy(self, start, stop, dtype=None):
        sizes.append(stop - start)
        return orig(self, start, stop, dtype)

    monkeypatch.setattr(DecomposedBias, "dense_rows", spy)
    out = sdpa(q, k, v, DecomposedBias(fs, lay, lay), impl="chunked", chunk_size=6)
    out.sum().backward()
    assert sizes and max(sizes) <= 6
    assert len(sizes) == 2 * 4  # 21 query rows in chunks of 6: 4 forward + 4 recomputed in the backward
    assert all(f.grad is not None for f in fs)


def test_bias_dispatch_is_explicit():
    lay, q, k, v, fs = _relpos_case((2, 2), 0)
    b = DecomposedBias(fs, lay, lay)
    assert select_bias_impl(q, b) == "fold"
    assert select_bias_impl(q, b, "chunked") == "chunked"
    with pytest.raises(ValueError, match="unknown attention impl"):
        select_bias_impl(q, b, "flex")
    with pytest.raises(ValueError, match="dropout"):
        sdpa(q, k, v, b, impl="chunked", dropout_p=0.1)


def test_fold_no_nxn_tensor(monkeypatch):
    """The fold path never builds a mask: dense rows are never requested."""
    lay, q, k, v, fs = _relpos_case((4, 4), 1)

    def boom(*a, **kw):
        raise AssertionError("fold built a dense bias block")

    monkeypatch.setattr(DecomposedBias, "dense_rows", boom)
    sdpa(q, k, v, DecomposedBias(fs, lay, lay), impl="fold").sum().backward()
    assert A.select_bias_impl(q, DecomposedBias(fs, lay, lay)) == "fold"


# ---- bench helpers --------------------------------------------------------------------------------------------------
def test_bench_markdown_and_peak_memory():
    from vispos import bench

    md = bench.to_markdown([dict(suite="rope", workload="w", path="p", ms=1.5, vs_timm=2.0, goal="g")],
                           dict(device="cpu"), "vispos bench --quick")
    assert "| w | p | 1.5 | 2 | g |" in md and "vispos bench --quick" in md
    bench._pin_malloc()
    mem = bench.peak_extra_bytes(lambda: torch.ones(16 * 2**20 // 4).sum(), torch.device("cpu"))
    if mem is not None:
        assert mem >= 12 * 2**20, f"a 16 MiB buffer measured as {mem / 2**20:.1f} MiB of peak RSS"


def test_fold_head_dim_padded_to_multiple_of_8(monkeypatch):
    """Folded q/k head dims are padded to a multiple of 8 (fused CUDA kernels need it) without changing results."""
    lay, q, k, v, fs = _relpos_case((3, 4), 1)  # head dim 8 + 3 + 4 = 15 folded columns -> padded to 16
    seen = []
    real = A.F.scaled_dot_product_attention

    def spy(q2, k2, v2, **kw):
        seen.append((q2.shape[-1], k2.shape[-1]))
        return real(q2, k2, v2, **kw)

    b = DecomposedBias(fs, lay, lay)
    ref = sdpa(q, k, v, b, impl="dense")
    monkeypatch.setattr(A.F, "scaled_dot_product_attention", spy)
    out = sdpa(q, k, v, b, impl="fold")
    assert seen and all(dq == dk == 16 for dq, dk in seen)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_peak_memory_counts_a_buffer_that_reuses_a_free_heap_chunk():
    """Earlier work can leave big free chunks resident in glibc's heap (its mmap threshold grows after a free); a
    buffer that fits one costs no new RSS unless the measurement trims the heap first (it read 0 in full runs)."""
    from vispos import bench

    for _ in range(3):  # raise glibc's dynamic mmap threshold, then leave 60 MiB of free, resident heap chunks
        a = torch.ones(20 * 2**20 // 4)
        del a
    a = [torch.ones(20 * 2**20 // 4) for _ in range(3)]
    del a
    bench._pin_malloc()
    mem = bench.peak_extra_bytes(lambda: torch.ones(16 * 2**20 // 4).sum(), torch.device("cpu"))
    if mem is not None:
        assert mem >= 12 * 2**20, f"a 16 MiB buffer measured as {mem / 2**20:.1f} MiB of peak RSS"
