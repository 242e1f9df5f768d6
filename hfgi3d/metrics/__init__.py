"""Evaluation metrics of an inversion (docs/method.md §9): fidelity, identity, 3D consistency.

Pure functions and frozen networks; the callbacks in :mod:`hfgi3d.callbacks` call them.
"""
