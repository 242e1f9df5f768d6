"""Evaluation metrics of an inversion (SPEC §7): fidelity, identity, 3D consistency.

Pure functions and frozen networks; the callbacks in :mod:`hfgi3d.callbacks` call them.
"""
