"""benchmarks/demo_tables.py (issues 15, 16): the demo numbers in README.md and docs/ are regenerated from the
demos' results.json files, between marker comments. Checked on small hand-computed fixtures, and the committed docs
must hold every marker and be exactly the script's output for the recorded run (benchmarks/demo_results/)."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_tables", ROOT / "benchmarks" / "demo_tables.py")
dt = importlib.util.module_from_spec(_spec)
sys.modules["demo_tables"] = dt
_spec.loader.exec_module(dt)


def _result(table, sizes, train_size, n, chance=0.25):
    """A results.json of ``vispos train resolution``: ``table[variant][seed] = [correct per size]``."""
    rows = []
    for v, seeds in table.items():
        for seed, counts in seeds.items():
            for s, c in zip(sizes, counts):
                rows.append(dict(variant=v, seed=seed, size=s, n=n, correct1=c, top1=c / n, pe=v))
    return dict(command="train", data="synthetic task 'x'", task="x", num_classes=4, chance=chance, sizes=sizes,
                train_size=train_size, train_sizes=None, variants=[], rows=rows,
                summary={v: {} for v in table}, deltas={}, wall_time_s=12.3, warnings=[],
                environment=dict(torch="2.x", torch_threads=1, gpu=None,
                                 cpu=dict(model="Some CPU", cores=2, simd=["avx2", "fma"])))


SMALL = _result({"a": {0: [5, 8, 7], 1: [6, 9, 9]}, "b": {0: [2, 4, 4], 1: [2, 4, 6]}}, ["8", "16", "32"], "16", 10)


def test_resolution_tables_of_a_small_fixture():
    assert dt.resolution_demo(SMALL) == (
        "Top-1 (%) mean ± std over seeds 0, 1 (10 test crops per cell, chance 25.0 %); in brackets the change from "
        "the training size in points, paired by seed (`table.md` has it with its spread):\n\n"
        "| PE | 0.5x (8 px) | 1x (16 px) | 2x (32 px) |\n"
        "|---|---|---|---|\n"
        "| a | 55.0 ± 7.1 (−30.0) | 85.0 ± 7.1 | 80.0 ± 14.1 (−5.0) |\n"
        "| b | 20.0 ± 0.0 (−20.0) | 40.0 ± 0.0 | 50.0 ± 14.1 (+10.0) |\n")
    head = dt.resolution_headline(SMALL)
    assert "from the 16 px training size, mean of 2 seeds" in head
    assert head.endswith("| PE | 0.5x | 2x |\n|---|---|---|\n| a | −30.0 | −5.0 |\n| b | −20.0 | +10.0 |\n")
    assert dt.delta(SMALL, "b", "32", minus="a") == [pytest.approx(10.0), pytest.approx(20.0)]


def test_verdicts():
    assert dt.verdict([-3, -2, -4], -1) == "yes"
    assert dt.verdict([3, 2, 4], -1) == "no"
    assert dt.verdict([-1, -2, 0], -1) == "not resolved"  # |mean| = std
    assert dt.verdict([0, 0, 0], +1) == "not resolved"


PAPER = _result({
    "ape": {0: [60, 80, 82, 75, 70], 1: [62, 80, 83, 75, 71], 2: [58, 80, 81, 75, 69]},
    "peg": {0: [50, 80, 82, 78, 70], 1: [50, 80, 83, 79, 70], 2: [50, 80, 81, 77, 70]},
    "rope_axial": {k: [60, 80, 77, 76, 75] for k in range(3)},
    "rope_mixed": {0: [65, 80, 81, 77, 72], 1: [65, 80, 82, 78, 72], 2: [65, 80, 80, 76, 72]},
}, ["12", "28", "48", "64", "84"], "28", 100, chance=1 / 12)


def test_paper_comparison_of_a_fixture():
    text = dt.resolution_papers(PAPER)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # ape 0.43x minus its lowest change above, per seed: -20 - -10, -18 - -9, -22 - -11
    assert rows["ResFormer Tab. 1: APE (DeiT-S) loses most at 0.43x"].endswith("−10.0 ± 1.0 | yes |")
    assert rows["ResFormer Tab. 1: APE loses more at 3x than at 1.7x"].endswith("−12.0 ± 0.0 | yes |")
    assert rows["RoPE-ViT (ViT-S): RoPE-Mixed gains at 1.7x"].endswith("+1.0 ± 1.0 | not resolved |")
    assert rows["RoPE-ViT (ViT-S): APE loses at 1.7x"].endswith("+2.0 ± 1.0 | no |")
    assert rows["RoPE-ViT (ViT-S): RoPE-Axial loses at 1.7x"].endswith("−3.0 ± 0.0 | yes |")
    assert rows["RoPE-ViT (ViT-S): RoPE-Mixed drops less than APE at 2.3x"].endswith("+2.0 ± 1.0 | yes |")
    assert rows["CPVT Tab. 2 (Ti): PEG drops less than APE at 1.7x"].endswith("+0.0 ± 0.0 | not resolved |")
    assert "**5 agree, 1 disagree, 3 not resolved** of 9" in text


def test_video_and_rope_blocks_use_the_demo_formatting():
    from vispos.eval.frames.results import TABLE_KEYS, table_md

    agg = [dict(rule=r, frames=f, scale=f // 8, n=4, **{k: 0.5 for k in TABLE_KEYS})
           for r in ("none", "riflex") for f in (8, 16)]
    res = dict(config=dict(num_samples=4, sampler="euler", sample_steps=8), train_len=8, lengths=[8, 16],
               temporal_rope=dict(base=100.0, dim=16, default_k=2, default_N_k=11), riflex_k_used=2,
               identified=None, aggregate=agg, generate_wall_s=10.2,
               demo=dict(scale="cpu", train_wall_s=90.4, total_wall_s=100.6),
               environment=dict(torch="2.x", torch_threads=2, gpu=None, cpu=dict(model="C", cores=2, simd=["avx2"])))
    text = dt.video_demo(res)
    assert table_md(agg, TABLE_KEYS) in text and "library default k = 2 (N_k = 11" in text
    assert "Video demo wall time 101 s: training 90 s, generation and scoring 10 s; torch 2.x on C (2 cores, " \
           "AVX2), 2 torch thread(s)." in text
    rope = dict(train_len=4, test_len=8, k=1, rows=[dict(rule="none", changed=[], new_loops=[1], top_ratio=1.0,
                                                          loop=6.0, K_1=0.9, K_L=0.1, K_Lp=-0.1)])
    assert dt.rope_explorer(rope).splitlines()[2] == "| none | - | 1 | 1.000 | 6.000 | 0.900 | 0.100 | -0.100 |"


def test_rewrite_between_markers_and_refuse_broken_ones(tmp_path):
    text = "a\n<!-- demo-table:x begin -->\nold\n<!-- demo-table:x end -->\nb\n"
    assert dt.replace_block(text, "x", "new\n") == "a\n<!-- demo-table:x begin -->\nnew\n<!-- demo-table:x end -->\nb\n"
    with pytest.raises(ValueError, match="expected one"):
        dt.replace_block(text + "<!-- demo-table:x begin -->", "x", "new")
    with pytest.raises(ValueError, match="expected one"):
        dt.replace_block("nothing", "x", "new")
    with pytest.raises(ValueError, match="before the begin"):
        dt.replace_block("<!-- demo-table:x end -->\n<!-- demo-table:x begin -->", "x", "new")


def test_script_rewrites_a_copy_of_the_docs_from_a_results_folder(tmp_path):
    root = tmp_path / "repo"
    for doc in dt.BLOCKS:
        (root / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, root / doc)
    res_dir = tmp_path / "results" / "resolution"
    res_dir.mkdir(parents=True)
    (res_dir / "results.json").write_text(json.dumps(PAPER))
    assert dt.main(["--results", str(tmp_path / "results"), "--root", str(root), "--note", "a quiet machine"]) == 0
    readme = (root / "README.md").read_text()
    assert dt.block_text(readme, "resolution-headline") == dt.resolution_headline(PAPER).strip("\n")
    assert "Wall times of the recorded run: resolution demo 12 s; torch 2.x on Some CPU (2 cores, AVX2), 1 torch thread(s); a quiet machine." in readme
    assert dt.block_text((root / "docs/resolution.md").read_text(), "resolution-papers") == \
        dt.resolution_papers(PAPER).strip("\n")
    # the other blocks (no results for them) are left as they were
    assert dt.block_text((root / "docs/video.md").read_text(), "video-demo") == \
        dt.block_text((ROOT / "docs/video.md").read_text(), "video-demo")
    assert dt.main(["--results", str(tmp_path / "results"), "--root", str(root), "--check",
                    "--note", "a quiet machine"]) == 0
    (root / "README.md").write_text(readme.replace("−", "-"))  # a hand edit inside a block
    assert dt.main(["--results", str(tmp_path / "results"), "--root", str(root), "--check",
                    "--note", "a quiet machine"]) == 1
    with pytest.raises(ValueError, match="no results for block"):
        dt.main(["--results", str(tmp_path / "results"), "--root", str(root), "--strict"])


def test_committed_docs_hold_the_markers_and_the_recorded_run():
    for doc, names in dt.BLOCKS.items():
        text = (ROOT / doc).read_text()
        for name in names:
            assert dt.block_text(text, name).strip(), f"{doc}: block {name!r} is empty"
    recorded = dt.load_recorded()
    assert set(recorded) - {"_run"} == set(dt.SOURCES), f"benchmarks/demo_results/ lacks {set(dt.SOURCES) - set(recorded)}"
    new = dt.rewrite(ROOT, dt.render_blocks(recorded), strict=True)
    for doc, text in new.items():
        assert text == (ROOT / doc).read_text(), (f"{doc} differs from benchmarks/demo_tables.py's output for the "
                                                  f"recorded run: regenerate it, do not edit the tables by hand")
