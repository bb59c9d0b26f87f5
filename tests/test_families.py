"""Families own their knowledge; hosts ask them generically; the registry reads the class (one source)."""
import ast
import logging
import pathlib
import subprocess
import sys

import pytest
import timm
import torch

import vispos
from vispos.pe.base import PositionalEmbedding
from vispos.pe.registry import _REGISTRY, register_family

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILY_NAMES = {info.name for info in vispos.list_pes()}


def test_host_code_names_no_family():
    """No comparison or dict key in vispos/integrations or vispos/models uses a family name."""
    hits = []
    for sub in ("vispos/integrations", "vispos/models"):
        for f in sorted((ROOT / sub).rglob("*.py")):
            for n in ast.walk(ast.parse(f.read_text())):
                parts = [n.left, *n.comparators] if isinstance(n, ast.Compare) else \
                    [k for k in n.keys if k] if isinstance(n, ast.Dict) else []
                hits += [f"{f.relative_to(ROOT)}:{m.lineno} {m.value!r}" for c in parts for m in ast.walk(c)
                         if isinstance(m, ast.Constant) and m.value in FAMILY_NAMES]
    assert not hits, hits


def test_registry_metadata_is_the_class():
    for info in vispos.list_pes():
        cls = info.cls
        assert cls is not None and cls.name == info.name and cls.family == info.family
        assert info.ndims == tuple(cls.ndims) and set(info.hooks) == set(cls.hooks)
        assert info.description == cls.description and info.description
        pe = vispos.build_pe(info.name, dim=32, num_heads=2, depth=2, grid=(2, 4, 4) if 2 not in info.ndims
                             else (4, 4), num_prefix=0)
        assert type(pe) is cls and pe.hooks == cls.hooks


def test_registry_has_no_import_cycle():
    """vispos.pe.registry imports only the base; no family module imports the registry late (``noqa: E402``)."""
    for f in (ROOT / "vispos" / "pe").glob("*.py"):
        assert "E402" not in f.read_text(), f
    assert "E402" not in (ROOT / "vispos" / "registry.py").read_text()
    for mod in ("vispos.pe.registry", "vispos.registry", "vispos.pe.host"):
        code = f"import {mod}, vispos; assert len(vispos.list_pes()) >= 9"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]


class _ToyTablePE(PositionalEmbedding):
    """A family defined outside vispos: a learned table per token, taken over from a host's absolute table."""

    name = "toy_table"
    family = "toy"
    description = "test family: a learned per-token table"
    hooks = frozenset({"token"})

    def __init__(self, dim, rows):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(1, rows, dim))

    def forward_tokens(self, x, layout):
        return x + self.table

    def state_from_host(self, host, path):
        t = host.peek("abs_table")
        if t is None or t.table.shape != self.table.shape:
            return {}
        host.take("abs_table", path)
        host.log("%s -> %s.table", t.source, path)
        return {"table": t.table}

    def no_weight_decay(self):
        return {"table"}


def _build_toy(*, dim=None, grid=None, num_prefix=0, **kw):
    return _ToyTablePE(dim, num_prefix + grid[0] * grid[1])


@pytest.fixture
def toy_family():
    register_family(_ToyTablePE, _build_toy)
    yield
    del _REGISTRY["toy_table"]


def test_new_family_works_in_the_timm_host_without_host_edits(toy_family, caplog):
    """Registering a class is all a family needs: build_pe, lists, the timm host's conversion (it takes timm's
    pos_embed through its own state_from_host) and no_weight_decay."""
    info = vispos.registry.get_pe_info("toy_table")
    assert info.family == "toy" and info.hooks == ("token",)
    plain = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=3).eval()
    with torch.no_grad():
        plain.pos_embed.normal_()
    with caplog.at_level(logging.INFO, logger="vispos.integrations.timm"):
        model = vispos.integrations.timm.install_pe(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32,
                                                                      num_classes=3), ["toy_table", "rope_axial"])
        model.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(model.pe.pes[0].table, plain.pos_embed)
    assert any("-> pe.pes.0.table" in r.getMessage() for r in caplog.records)
    assert "pe.pes.0.table" in model.no_weight_decay()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_list_source_is_generic(toy_family):
    """LaPE's 'take the APE member of the list' is its class' list_source, not a registry special case."""
    pe = vispos.build_pe(["ape_sincos", "lape"], dim=16, num_heads=2, depth=2, grid=(3, 4))
    assert pe.name == "lape" and pe.base.name == "ape_sincos"
    with pytest.raises(ValueError, match="one base"):
        vispos.build_pe(["ape", "ape_sincos", "lape"], dim=16, num_heads=2, depth=2, grid=(3, 4))
