"""The timm parity matrix (benchmarks/timm_parity.py): every timm family with a positional scheme, converted to
vispos, equals timm to 1e-5 relative at the training size, a rectangular size and after set_input_size; and
docs/timm.md holds the script's table."""
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "timm_parity.py"
_spec = importlib.util.spec_from_file_location("timm_parity", _PATH)
tp = importlib.util.module_from_spec(_spec)
sys.modules["timm_parity"] = tp  # dataclasses look their module up by name
_spec.loader.exec_module(tp)

_RESULTS = {}


def _result(row):
    if row.family not in _RESULTS:
        _RESULTS[row.family] = tp.run_row(row)
    return _RESULTS[row.family]


@pytest.mark.parametrize("row", tp.ROWS, ids=[r.family for r in tp.ROWS])
def test_converted_equals_timm(row):
    res = _result(row)
    assert res["max"] <= tp.TOL, (row.model, res["spec"], res["diffs"])


def test_doc_table_is_the_scripts():
    """Same rows, models and specs; each difference within a factor 10 of this run's (float noise differs by
    machine), zero where this run's is zero."""
    text = tp.DOC.read_text(encoding="utf-8")
    assert tp.BEGIN in text and tp.END in text, "docs/timm.md lacks the parity-matrix markers"
    doc = tp.parse_table(text.split(tp.BEGIN, 1)[1].split(tp.END, 1)[0])
    now = tp.parse_table(tp.render([_result(r) for r in tp.ROWS]))
    stale = "docs/timm.md is stale: run `python benchmarks/timm_parity.py --write`"
    assert [d[:3] for d in doc] == [n[:3] for n in now], stale
    for d, n in zip(doc, now):
        for a, b in zip(d[3], n[3]):
            assert a <= tp.TOL and (a == 0) == (b == 0), (stale, d, n)
            assert a == 0 or 0.1 < a / b < 10, (stale, d, n)
