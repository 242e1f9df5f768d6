"""EG3D tri-plane generator in pure PyTorch, loading NVIDIA's released network pickles.

>>> from hfgi3d.generator import load_generator
>>> G = load_generator("ffhq512-128.pkl")                    # doctest: +SKIP
>>> ws = G.mapping(z, c, truncation_psi=0.7)                  # doctest: +SKIP
>>> out = G.synthesis(ws, c, noise_mode="const")              # doctest: +SKIP
"""

from hfgi3d.generator.checkpoint import (
    GeneratorLoadError,
    load_generator,
    open_generator,
    round_weights,
    save_generator,
)
from hfgi3d.generator.config import GeneratorConfig, RenderingConfig, ffhq512_config, tiny_config
from hfgi3d.generator.triplane import TriPlaneGenerator

__all__ = [
    "GeneratorConfig",
    "GeneratorLoadError",
    "RenderingConfig",
    "TriPlaneGenerator",
    "ffhq512_config",
    "load_generator",
    "open_generator",
    "round_weights",
    "save_generator",
    "tiny_config",
]
