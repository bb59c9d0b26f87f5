"""docs/timm.md: every ```python block runs as written (in order, each in a fresh namespace)."""
import logging
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "timm.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_doc_has_the_three_ways():
    text = DOC.read_text(encoding="utf-8")
    assert len(BLOCKS) >= 3
    for needle in ("vispos.create_model", "timm.create_model", "checkpoint_path", "pretrained_cfg_overlay"):
        assert needle in text


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_block_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        exec(compile(BLOCKS[i], f"{DOC.name}[block {i}]", "exec"), {"__name__": f"doc_block_{i}"})
    finally:  # logging.basicConfig in a snippet must not leak into other tests
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
    out = capsys.readouterr().out
    assert "Error" not in out
