"""Every ```python block of README.md runs as written (in a temp working dir)."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path):
    text = path.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


BLOCKS = _blocks(ROOT / "README.md")


def test_readme_has_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert BLOCKS, "README has no python examples"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[i], f"README.md[block {i}]", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
