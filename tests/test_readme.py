"""Every ```python block of README.md and of the docs without a test of their own runs as written (in a temp
working dir, each in a fresh namespace); docs/families.md holds fragments, not programs, and is not run.

Blocks of docs/timm.md and docs/diffusers.md are run by tests/test_docs_timm.py and tests/test_diffusers.py; the
README examples copied from them must be verbatim copies (so they are tested there) and are not run twice here.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TESTED_DOCS = ("timm.md", "diffusers.md")  # each has its own test module
FRAGMENT_DOCS = ("families.md",)  # its blocks are one-line fragments (no imports, no inputs), not programs


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


README_BLOCKS = _blocks(README)
TESTED_ELSEWHERE = {b for doc in TESTED_DOCS for b in _blocks(ROOT / "docs" / doc)}
OWN_DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in TESTED_DOCS + FRAGMENT_DOCS)
BLOCKS = [(f"README.md[block {i}]", b) for i, b in enumerate(README_BLOCKS) if b not in TESTED_ELSEWHERE]
BLOCKS += [(f"docs/{p.name}[block {i}]", b) for p in OWN_DOCS for i, b in enumerate(_blocks(p))]


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    assert len(text.encode()) < 25000, f"README.md is {len(text.encode())} bytes; details belong in docs/"
    assert len(README_BLOCKS) == 3, "the README shows three short examples"
    assert any(b not in TESTED_ELSEWHERE for b in README_BLOCKS), "README has no python example of its own"
    for extra in ("video", "plots", "diffusers", "dev"):
        assert f'.[{extra}]' in text
    # every doc it links exists
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


def test_readme_examples_from_docs_are_verbatim():
    """The README's timm and diffusers examples are the docs' tested snippets, verbatim."""
    timm_blocks = set(_blocks(ROOT / "docs" / "timm.md"))
    diffusers_blocks = set(_blocks(ROOT / "docs" / "diffusers.md"))
    assert timm_blocks & set(README_BLOCKS) and diffusers_blocks & set(README_BLOCKS)


def check_block_runs(code: str, name: str, where) -> None:
    """Run a snippet in ``where``; any exception fails the test with the snippet's name in the traceback."""
    cwd = os.getcwd()
    os.chdir(where)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("name,code", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_python_block_runs(name, code, tmp_path):
    check_block_runs(code, name, tmp_path)
