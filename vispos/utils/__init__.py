"""Shared utilities: atomic result/checkpoint writing, YAML configs, distributed helpers."""
