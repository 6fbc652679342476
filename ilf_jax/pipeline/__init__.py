"""The ILF pipeline (Algorithm 1, baselines, ablations) as resumable stages over files in a run directory."""
