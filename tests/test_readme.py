"""Every ```python block of README.md runs as written (in a temp working dir).

Blocks copied from docs/timm.md and docs/diffusers.md are run by tests/test_docs_timm.py and tests/test_diffusers.py
(which also check that those docs are what README shows), so they are not run twice here.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


README_BLOCKS = _blocks(ROOT / "README.md")
TESTED_ELSEWHERE = {b for doc in ("timm.md", "diffusers.md") for b in _blocks(ROOT / "docs" / doc)}
BLOCKS = [b for b in README_BLOCKS if b not in TESTED_ELSEWHERE]


def test_readme_has_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert BLOCKS, "README has no python examples of its own"


def test_readme_shows_the_tested_doc_snippets():
    """README's timm / diffusers sections are the docs' tested snippets, verbatim."""
    assert TESTED_ELSEWHERE and TESTED_ELSEWHERE <= set(README_BLOCKS)


def check_block_runs(code: str, name: str, where) -> None:
    """Run a snippet in ``where``; any exception fails the test with the snippet's name in the traceback."""
    cwd = os.getcwd()
    os.chdir(where)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path):
    check_block_runs(BLOCKS[i], f"README.md[block {i}]", tmp_path)
