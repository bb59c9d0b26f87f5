"""Resolution scaling through the Python API: train tiny ViTs with every 2D PE at 32 px, test from 16 to 96 px.

The same experiment as ``vispos demo resolution`` (one implementation: :mod:`vispos.eval.resolution`), written out
step by step so it is easy to adapt: change the task, the variants, the sizes, or evaluate your own model.

    python demos/resolution_scaling.py [--out results/resolution_script] [--steps N]
"""
import argparse
import logging
from pathlib import Path

import torch

from vispos.eval import resolution as R
from vispos.utils.io import ensure_writable_dir

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="results/resolution_script")
parser.add_argument("--steps", type=int, default=None, help="override the demo's training steps")
args = parser.parse_args()
logging.basicConfig(level=logging.WARNING)

# 1. the configuration: the CPU demo's YAML, with a few overrides (any key of R.DEFAULTS)
demo_yaml = Path(__file__).resolve().parents[1] / "configs" / "resolution" / "demo_cpu.yaml"
overrides = {"out": args.out} if args.steps is None else {"out": args.out, "steps": args.steps}
cfg = R.load_config(demo_yaml, **overrides)
out = ensure_writable_dir(args.out)  # fail now, not after training
torch.set_num_threads(cfg["threads"] or torch.get_num_threads())
variants = R.parse_variants(cfg)  # ape, ape_sincos, peg, ..., ape+rope_axial (unknown names raise here)
data = R.plan_data(cfg, train=True)  # the built-in task: classes, chance level, sample counts
print(f"{len(variants)} PE variants on {data.source}, chance {100 * data.chance:.1f}%")

# 2. train each variant at the training size, then evaluate it at every test size
rows = []
for v in variants:
    model = R.train_variant(v, cfg, data, seed=0, ckpt=R.checkpoint_path(out, v, 0))
    for hw in cfg["sizes"]:
        acc = R.evaluate(model, cfg, data, hw, desc=f"eval {v.name} {hw[0]}x{hw[1]}")
        rows.append(R.result_row(v, 0, hw, acc))
        print(f"{v.name:>16} @ {R.size_label(tuple(hw)):>3} px: top-1 {100 * acc['top1']:.1f}%")

# 3. the table, the plot and the files (results.json / .csv, table.md, accuracy_vs_resolution.png, config.yaml)
result = R.make_result(cfg, data, variants, rows)
R.write_results(out, result, cfg)
print(result["table"])
print(f"results in {args.out}")
