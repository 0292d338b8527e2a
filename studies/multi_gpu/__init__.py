"""The multi-GPU check: training on 2 GPUs against 1 (``python -m studies.multi_gpu.check``, RESULTS.md)."""
