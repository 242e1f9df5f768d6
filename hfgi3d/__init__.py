"""hfgi3d: high-fidelity 3D GAN inversion of face photos by pseudo-multi-view optimization.

Subpackages: :mod:`hfgi3d.generator` (EG3D tri-plane generator), :mod:`hfgi3d.cameras`
(EG3D camera convention).
"""

__version__ = "0.1.0"
