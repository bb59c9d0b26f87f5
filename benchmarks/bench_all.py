"""Run the vispos benchmark suites (same as ``vispos bench``), e.g.

    .venv/bin/python benchmarks/bench_all.py --device cpu --threads 2 --out results/bench_cpu
    .venv/bin/python benchmarks/bench_all.py --device cuda --out $OUT/bench_cuda

See :mod:`vispos.bench` for the suites, the timing method and the columns.
"""
import argparse
import sys

from vispos.bench import add_bench_args, run_bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(parser)
    sys.exit(run_bench(parser.parse_args()))
