"""Accelerate / DeepSpeed launch configurations (YAML data)."""
