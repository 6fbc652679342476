"""Tasks, splits, annotation files and the paper's prompt/test formats (no JAX here)."""
