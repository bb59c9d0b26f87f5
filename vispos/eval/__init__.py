"""Evaluation tools: resolution sweeps, frame extrapolation, the RoPE explorer."""
