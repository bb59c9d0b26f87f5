"""Resolution scaling through the Python API: the CPU demo (tiny ViTs, 4 PEs, 3 seeds, natural-image crops at 28 px,
tested at 0.43x-3x the training size), step by step.

The same experiment as ``vispos demo resolution`` (one implementation: :mod:`vispos.eval.resolution`), written out
step by step so it is easy to adapt: change the task, the variants, the sizes, or evaluate your own model.

    python demos/resolution_scaling.py [--out results/resolution_script] [--steps N]
"""
import argparse
import logging

import torch

from vispos.eval import resolution as R
from vispos.eval.resolution.experiment import OWNED
from vispos.utils.io import ensure_writable_dir
from vispos.utils.outdir import check_out, remove_entries

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="results/resolution_script")
parser.add_argument("--steps", type=int, default=None, help="override the demo's training steps")
parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
args = parser.parse_args()
logging.basicConfig(level=logging.WARNING)

# 1. the configuration: the CPU demo's YAML, with a few overrides (any key of R.DEFAULTS)
demo_yaml = R.demo_config_path("cpu")  # configs/resolution/demo_cpu.yaml (checkout or installed wheel)
overrides = {"out": args.out} if args.steps is None else {"out": args.out, "steps": args.steps}
cfg = R.load_config(demo_yaml, **overrides)
cfg = R.resolve_sizes(cfg)  # size_ratios 0.43,1,1.7,2.3,3 x 28 px -> 12, 28, 48, 64, 84 (patch multiples)
doomed = check_out(args.out, overwrite=args.overwrite, owned=OWNED)  # earlier results are not replaced silently
out = ensure_writable_dir(args.out)  # fail now, not after training
remove_entries(out, doomed)
torch.set_num_threads(cfg["threads"] or torch.get_num_threads())
variants = R.parse_variants(cfg)  # ape, peg, rope_axial, rope_mixed (unknown names raise here)
data = R.plan_data(cfg, train=True)  # the built-in task: classes, chance level, sample counts
print(f"{len(variants)} PE variants on {data.source}, chance {100 * data.chance:.1f}%")

# 2. train each variant at the training size, then evaluate it at every test size
rows = []
for v in variants:
    for seed in cfg["seeds"]:
        model = R.train_variant(v, cfg, data, seed=seed, ckpt=R.checkpoint_path(out, v, seed))
        for hw in cfg["sizes"]:
            acc = R.evaluate(model, cfg, data, hw, desc=f"eval {v.name} {hw[0]}x{hw[1]}")
            rows.append(R.result_row(v, seed, hw, acc))
            print(f"{v.name:>16} seed {seed} @ {R.size_label(tuple(hw)):>3} px: top-1 {100 * acc['top1']:.1f}%")

# 3. the table, the plot and the files (results.json / .csv, table.md, accuracy_vs_resolution.png, config.yaml)
result = R.make_result(cfg, data, variants, rows)
R.write_results(out, result, cfg)
print(result["table"])
print(f"results in {args.out}")
