"""Evaluation tools: resolution sweeps (:mod:`vispos.eval.resolution`), frame extrapolation, the RoPE explorer,
their metrics, and line plots (:mod:`vispos.eval.plots`).

Import-light: nothing is imported here; import the submodule you need.
"""
