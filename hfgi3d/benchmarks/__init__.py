"""Benchmarks: many inversions, one JSON line each, resumable and sharded across processes.

``python -m hfgi3d.benchmarks celeba ...`` (the paper's protocol on CelebA-HQ),
``python -m hfgi3d.benchmarks synthetic ...`` (ground truth from a generator, no data needed) and
``python -m hfgi3d.benchmarks aggregate RESULTS.jsonl`` (the mean ± std table next to the paper's).
"""
