"""Generator configuration: EG3D's constructor arguments and rendering options, typed.

The field names follow EG3D's ``init_kwargs`` / ``rendering_kwargs`` so that a released
network pickle maps onto this config one to one (:func:`config_from_eg3d`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hfgi3d.presets import preset_path

SUPERRESOLUTION_RESOLUTIONS = {
    "SuperresolutionHybrid8XDC": 512,
    "SuperresolutionHybrid8X": 512,
    "SuperresolutionHybrid4X": 256,
    "SuperresolutionHybrid2X": 128,
}
"""Output resolution each EG3D super-resolution module is built for."""


@dataclass
class RenderingConfig:
    """Volume rendering options (EG3D's ``rendering_kwargs``); distances in world units."""

    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    neural_rendering_resolution: int = 128
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"
    white_back: bool = False
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    superresolution_noise_mode: str = "none"
    sr_antialias: bool = True
    decoder_lr_mul: float = 1.0
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)


@dataclass
class GeneratorConfig:
    """Architecture of the tri-plane generator.

    ``plane_resolution`` is 256 in every EG3D release; smaller values give fast test models.
    ``sr_conv_clamp`` is 256 in released models (EG3D enables it together with fp16).
    """

    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    img_resolution: int = 512
    img_channels: int = 3
    plane_resolution: int = 256
    channel_base: int = 32768
    channel_max: int = 512
    mapping_layers: int = 2
    conv_clamp: float | None = None
    superresolution: str = "SuperresolutionHybrid8XDC"
    sr_conv_clamp: float | None = 256.0
    rendering: RenderingConfig = field(default_factory=RenderingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.rendering, dict):
            self.rendering = RenderingConfig(**self.rendering)
        expected = SUPERRESOLUTION_RESOLUTIONS.get(self.superresolution)
        if expected is None:
            raise ValueError(
                f"unknown superresolution module {self.superresolution!r}; "
                f"choose one of {sorted(SUPERRESOLUTION_RESOLUTIONS)}"
            )
        if expected != self.img_resolution:
            raise ValueError(
                f"{self.superresolution} produces {expected}×{expected} images, "
                f"but img_resolution is {self.img_resolution}"
            )
        if self.plane_resolution < 4 or self.plane_resolution & (self.plane_resolution - 1):
            raise ValueError(f"plane_resolution must be a power of two >= 4, got {self.plane_resolution}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GeneratorConfig:
        values = dict(values)
        rendering = values.pop("rendering", {})
        rendering = dict(rendering)
        if "avg_camera_pivot" in rendering:
            rendering["avg_camera_pivot"] = tuple(rendering["avg_camera_pivot"])
        return cls(**values, rendering=RenderingConfig(**rendering))

    @classmethod
    def from_yaml(cls, path: str | Path) -> GeneratorConfig:
        """A config written as YAML (e.g. ``configs/generator/ffhq512.yaml``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"generator config not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()))


def ffhq512_config() -> GeneratorConfig:
    """The architecture of NVIDIA's ``ffhq512-128.pkl`` (``configs/generator/ffhq512.yaml``)."""
    return GeneratorConfig.from_yaml(preset_path("generator/ffhq512.yaml"))


def tiny_config(plane_resolution: int | None = None) -> GeneratorConfig:
    """The small official-shaped architecture of ``configs/generator/tiny.yaml`` (128² output).

    It is the configuration of the EG3D reference data in ``tests/data/eg3d_reference`` with
    32² tri-planes (a forward pass takes tens of milliseconds on a CPU); ``plane_resolution=256``
    gives the reference's official plane size.
    """
    config = GeneratorConfig.from_yaml(preset_path("generator/tiny.yaml"))
    return config if plane_resolution is None else dataclasses.replace(config, plane_resolution=plane_resolution)


_RENDERING_KEYS = {f.name for f in dataclasses.fields(RenderingConfig)} - {"neural_rendering_resolution"}


def config_from_eg3d(
    init_kwargs: dict[str, Any],
    rendering_kwargs: dict[str, Any],
    neural_rendering_resolution: int | None,
    plane_resolution: int = 256,
) -> GeneratorConfig:
    """Translate a ``TriPlaneGenerator``'s ``init_kwargs`` into a :class:`GeneratorConfig`.

    Training-only options (density regularisation, generator pose conditioning, blur, ...)
    are dropped; ``ray_start='auto'`` (ShapeNet models) is not supported.
    """
    if rendering_kwargs.get("ray_start") == "auto":
        raise ValueError("EG3D models with ray_start='auto' (ShapeNet) are not supported")
    sr_module = str(rendering_kwargs.get("superresolution_module", ""))
    sr_name = sr_module.rsplit(".", 1)[-1]
    rendering = {k: v for k, v in rendering_kwargs.items() if k in _RENDERING_KEYS}
    if "avg_camera_pivot" in rendering:
        rendering["avg_camera_pivot"] = tuple(float(v) for v in rendering["avg_camera_pivot"])
    rendering["neural_rendering_resolution"] = int(neural_rendering_resolution or 64)
    sr_num_fp16_res = int(init_kwargs.get("sr_num_fp16_res", 0))
    mapping_kwargs = dict(init_kwargs.get("mapping_kwargs") or {})
    return GeneratorConfig(
        z_dim=int(init_kwargs["z_dim"]),
        c_dim=int(init_kwargs["c_dim"]),
        w_dim=int(init_kwargs["w_dim"]),
        img_resolution=int(init_kwargs["img_resolution"]),
        img_channels=int(init_kwargs.get("img_channels", 3)),
        plane_resolution=plane_resolution,
        channel_base=int(init_kwargs.get("channel_base", 32768)),
        channel_max=int(init_kwargs.get("channel_max", 512)),
        mapping_layers=int(mapping_kwargs.get("num_layers", 8)),
        conv_clamp=init_kwargs.get("conv_clamp"),
        superresolution=sr_name,
        sr_conv_clamp=256.0 if sr_num_fp16_res > 0 else None,
        rendering=RenderingConfig(**rendering),
    )
