"""The layout travels with the call: gradient checkpointing, threads and replicas see each forward's own grid.

Two forwards of different grids (same token count 4x6 / 6x4, and another count) summed into one backward must give,
with gradient checkpointing on, the gradients of the same computation without it (timm ViT and EVA hosts,
VideoDiT). A stale "current layout" read by the recomputation gives wrong gradients or a recomputation error.
"""
import copy
import threading

import pytest
import timm
import torch

import vispos
from vispos.integrations import timm as vt
from vispos.models import VideoDiT

PES = [["ape", "rope_axial"], "rope_mixed", "rel_decomposed", "glpe", "lape"]
HOSTS = {"vit": ("vit_tiny_patch16_224", dict(embed_dim=48, num_heads=4)), "eva": ("eva02_tiny_patch14_224", dict(embed_dim=48, num_heads=4))}
IMAGES = [(32, 48), (48, 32), (32, 32)]  # patch 8: grids 4x6, 6x4 (same count), 4x4


def _id(pe):
    return "+".join(pe) if isinstance(pe, list) else pe


@torch.no_grad()
def _randomize(model):
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() > 1 else 0.3))
    return model


def _timm(host, pe):
    name, kw = HOSTS[host]
    model = vispos.create_model(name, pe=pe, depth=2, img_size=32, patch_size=8, num_classes=0,
                                dynamic_img_size=True, **kw)
    return _randomize(model)


def _grads(model, loss_fn):
    model.zero_grad()
    loss_fn(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for n in b:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6, msg=n)


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("pe", PES, ids=_id)
def test_timm_checkpointing_two_grids_one_backward(host, pe):
    model = _timm(host, pe)
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(2, 3, *s, generator=g) for s in IMAGES]

    def loss(m):
        return sum(((i + 1) * m.forward_features(x)).sin().sum() for i, x in enumerate(xs))

    _assert_same_grads(_grads(model, loss), _grads(ref, loss))
    assert any(n.startswith("pe.") for n, p in model.named_parameters() if p.grad is not None) or pe == "rope_mixed"


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_timm_checkpointing_forward_intermediates(host):
    model = _timm(host, ["ape", "rope_axial"])
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    xs = [torch.randn(1, 3, *s) for s in IMAGES[:2]]

    def loss(m):
        out = 0
        for x in xs:
            final, inter = m.forward_intermediates(x, indices=[0, 1], output_fmt="NLC")
            out = out + final.sin().sum() + sum((y * y).sum() for y in inter)
        return out

    _assert_same_grads(_grads(model, loss), _grads(ref, loss))


VIDEO_GRIDS = [(2, 4, 6), (2, 6, 4), (1, 4, 4)]  # token grids (patch 1x2x2): same count twice, then another


@pytest.mark.parametrize("attention", ["full", "alternating"])
@pytest.mark.parametrize("pe", PES, ids=_id)
def test_video_dit_checkpointing_two_grids_one_backward(pe, attention):
    model = VideoDiT(in_channels=2, video_size=(2, 8, 8), patch=(1, 2, 2), dim=48, depth=2, num_heads=2,
                     attention=attention, pe=pe)
    _randomize(model)
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 2, T, 2 * H, 2 * W, generator=g) for T, H, W in VIDEO_GRIDS]
    t = torch.tensor([0.3, 0.7])

    def loss(m):
        return sum(((i + 1) * m(x, t)).sin().sum() for i, x in enumerate(xs))

    _assert_same_grads(_grads(model, loss), _grads(ref, loss))


def test_video_dit_checkpointing_is_used():
    """Checkpointed blocks keep fewer activations: the saved tensors of the graph shrink."""
    model = VideoDiT(in_channels=2, video_size=(2, 8, 8), patch=(1, 2, 2), dim=32, depth=3, num_heads=2)
    x, t = torch.randn(1, 2, 2, 8, 8), torch.tensor([0.5])

    def n_saved(m):
        count = [0]

        def pack(tensor):
            count[0] += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            m(x, t)
        return count[0]

    full = n_saved(model)
    model.set_grad_checkpointing(True)
    assert n_saved(model) < full / 2


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_concurrent_threads_see_their_own_grid(host):
    """Threads sharing one model, each with its own grid, get the outputs of sequential calls."""
    model = _timm(host, ["ape", "rope_axial"]).eval()
    xs = [torch.randn(1, 3, *s) for s in IMAGES[:2]]
    with torch.no_grad():
        expected = [model.forward_features(x) for x in xs]
    errors, start = [], threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            for _ in range(20):
                with torch.no_grad():
                    torch.testing.assert_close(model.forward_features(xs[i]), expected[i], rtol=0, atol=0)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def _module_attrs(model):
    return {name: {k: v for k, v in vars(m).items() if not k.startswith("_") or k == "_vispos_index"}
            for name, m in model.named_modules()}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_forward_writes_no_module_state(host):
    """No attribute of any module changes in a forward (so nothing a later forward or a replica could see)."""
    model = _timm(host, ["ape", "lape"])
    model.set_grad_checkpointing(True)
    before = _module_attrs(model)
    model.forward_features(torch.randn(1, 3, 32, 48)).sum().backward()
    assert _module_attrs(model) == before


def test_blocks_need_the_call():
    model = _timm("vit", "rope_axial")
    x = torch.randn(1, 17, 48)
    with pytest.raises(RuntimeError, match="PECall"):
        model.blocks[0](x)
    eva = _timm("eva", "rope_axial")
    with pytest.raises(RuntimeError, match="PECall"):
        eva.blocks[0](torch.randn(1, 17, 48))
    with pytest.raises(RuntimeError, match="PECall"):
        eva.blocks[0].attn(torch.randn(1, 17, 48))


@pytest.mark.parametrize("kw", [dict(), dict(output_fmt="NLC", indices=[0], return_prefix_tokens=True),
                                dict(output_dict=True, return_prefix_tokens=True, norm=True),
                                dict(intermediates_only=True, stop_early=True, indices=1)])
def test_vit_forward_intermediates_equals_timm(kw):
    """The ViT host runs its own block loop: its forward_intermediates gives timm's outputs (an APE-only model
    converted from timm reproduces timm)."""
    plain = _randomize(timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=0,
                                         embed_dim=48, num_heads=4, reg_tokens=1)).eval()
    ours = vt.install_pe(copy.deepcopy(plain), "ape").eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = ours.forward_intermediates(x, **kw), plain.forward_intermediates(x, **kw)
    flat_a, flat_b = torch.utils._pytree.tree_flatten(a), torch.utils._pytree.tree_flatten(b)
    assert flat_a[1] == flat_b[1]
    for u, v in zip(flat_a[0], flat_b[0]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_installed_model_pickles(host):
    """The hook subclasses are reachable by name (``vispos.integrations.timm.hooks.Vispos<Class>``)."""
    import pickle

    model = _timm(host, ["ape", "rope_axial"]).eval()
    assert type(model).__module__ == "vispos.integrations.timm.hooks"
    twin = pickle.loads(pickle.dumps(model))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(twin.forward_features(x), model.forward_features(x), rtol=0, atol=0)
