"""Pseudo-multi-view construction (docs/method.md §5): auxiliary cameras and their pseudo views.

For each auxiliary camera ``p_i`` the input photo ``x`` (seen from ``p0``) is warped into
``p_i`` wherever the stage-1 geometry says the surface is visible from ``p0`` (``V_i``,
mask ``M_v``); the rest comes from a latent ``w_o`` fitted to the in-distribution part of
the input (``O_i = G(w_o, p_i)``, mask ``M_o = 1 − M_v``), and the two are blended into the
pseudo view ``v_i``.

Convention:
    Cameras are EG3D ``c25`` labels, images ``K×3×H×W`` in ``[-1, 1]`` at the generator's
    output resolution, masks ``K×1×H×W`` in ``[0, 1]``. Yaw/pitch offsets are radians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hfgi3d.cameras import FFHQ_PIVOT, make_c25, orbit_cam2world, split_c25, yaw_pitch_of, yaw_pitch_orbit
from hfgi3d.generator import TriPlaneGenerator
from hfgi3d.geometry import (
    alpha_blend,
    backward_warp,
    erode_mask,
    feather_mask,
    poisson_blend,
    upsample_depth,
    visibility_mask,
)


@dataclass
class PseudoViewConfig:
    """How auxiliary views are chosen and built. The values live in ``configs/`` (the paper's in
    ``configs/hfgi3d.yaml``, the release's in ``configs/hfgi3d_official.yaml``).

    Attributes:
        poses: ``random`` yaw/pitch offsets around the input pose, or a fixed ``orbit`` of K views
            around the frontal view (the release: K = 30, ``yaw = 0.35 sin(2πi/K)``,
            ``pitch = −0.05 + 0.25 cos(2πi/K)``).
        yaw_range_rad, pitch_range_rad: half-widths of the random offsets; amplitudes of the orbit.
        orbit_pitch_offset_rad: pitch of the orbit's centre (``orbit`` only).
        visibility_rel_tol: relative depth tolerance of the z-buffer test.
        grazing_cos: minimum cosine between surface normal and input ray to count as visible.
        erode_px: erosion of the visible mask, pixels.
        feather_px: width of the soft edge of ``M_v``, pixels.
        blend: ``poisson`` (seamless cloning) or ``alpha`` (Gaussian-feathered) blending of ``v_i``.
        alpha_radius_px: feathering radius of alpha blending.
        poisson_iterations, poisson_tol: conjugate-gradient budget of Poisson blending.
        visible_source: ``input`` (warped photo, the method) or ``generated`` (ablation
            ``no_visible_texture``: the stage-1 render at ``p_i``).
        occluded_source: ``generated`` (``G(w_o, p_i)``, the method) or ``interpolated``
            (ablation ``no_occluded``: the warped photo's colours smoothly interpolated into
            the occluded region, a harmonic fill).
    """

    poses: Literal["random", "orbit"]
    yaw_range_rad: float
    pitch_range_rad: float
    orbit_pitch_offset_rad: float
    visibility_rel_tol: float
    grazing_cos: float
    erode_px: int
    feather_px: int
    blend: Literal["poisson", "alpha"]
    alpha_radius_px: int
    poisson_iterations: int
    poisson_tol: float
    visible_source: Literal["input", "generated"]
    occluded_source: Literal["generated", "interpolated"]


@dataclass
class PseudoViews:
    """K auxiliary views with everything stage 2 needs (all on one device)."""

    c25: Tensor
    """``K×25`` auxiliary cameras ``p_i``."""
    visible: Tensor
    """``K×3×H×W`` ``V_i``: input colours warped to ``p_i`` (valid where ``mask_visible``)."""
    occluded: Tensor
    """``K×3×H×W`` ``O_i``: texture for the parts the input does not show."""
    mask_visible: Tensor
    """``K×1×H×W`` ``M_v``: eroded, feathered visibility."""
    mask_occluded: Tensor
    """``K×1×H×W`` ``M_o = 1 − M_v``."""
    pseudo: Tensor
    """``K×3×H×W`` blended pseudo view ``v_i``."""

    def __len__(self) -> int:
        return len(self.c25)

    def to(self, device: torch.device | str) -> PseudoViews:
        return PseudoViews(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @staticmethod
    def cat(parts: list[PseudoViews]) -> PseudoViews:
        """Views of several photos, one after the other (photo-major)."""
        return PseudoViews(*(torch.cat([getattr(p, f) for p in parts]) for f in PseudoViews.__dataclass_fields__))

    def select(self, index: Tensor | int) -> PseudoViews:
        """Views at ``index`` (an int keeps a leading dimension of 1)."""
        idx = torch.as_tensor([index] if isinstance(index, int) else index)
        return PseudoViews(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def auxiliary_cameras(
    c25_input: Tensor, num_views: int, config: PseudoViewConfig, generator: torch.Generator | None = None
) -> Tensor:
    """``K×25`` auxiliary cameras with the input camera's radius and intrinsics.

    ``random`` draws offsets uniformly in ``±yaw_range_rad`` / ``±pitch_range_rad`` around
    the input pose; ``orbit`` returns K views on an ellipse of those amplitudes around the
    frontal view, centred ``orbit_pitch_offset_rad`` in pitch.
    """
    cam2world_input, intrinsics = split_c25(c25_input[:1])
    radius = float(cam2world_input[0, :3, 3].norm())
    if config.poses == "orbit":
        yaw, pitch = yaw_pitch_orbit(
            num_views, config.yaw_range_rad, config.pitch_range_rad, config.orbit_pitch_offset_rad
        )
    elif config.poses == "random":
        yaw0, pitch0 = yaw_pitch_of(cam2world_input.float())
        unit = torch.rand(2, num_views, generator=generator) * 2 - 1  # uniform in [-1, 1)
        yaw = yaw0 + config.yaw_range_rad * unit[0]
        pitch = pitch0 + config.pitch_range_rad * unit[1]
    else:
        raise ValueError(f"poses must be 'random' or 'orbit', got {config.poses!r}")
    cam2world = orbit_cam2world(yaw, pitch, radius=radius, pivot=FFHQ_PIVOT)
    return make_c25(cam2world.to(c25_input), intrinsics[0])


@torch.no_grad()
def render_views(generator: TriPlaneGenerator, ws: Tensor, c25: Tensor, batch_size: int = 4) -> tuple[Tensor, Tensor]:
    """Images ``K×3×H×W`` and depth ``K×1×H×W`` (edge-aware upsampled to the image size) of one latent.

    Rendering is deterministic (no sample jitter) so that pseudo views are reproducible.

    ``ws`` is ``1×num_ws×w_dim``; the tri-planes are computed once and rendered in batches.
    """
    out = generator.render_cameras(generator.planes(ws), ws, c25, batch_size, deterministic=True)
    return out["image"], upsample_depth(out["image_depth"], out["image"].shape[-1])


@torch.no_grad()
def build_pseudo_views(
    generator: TriPlaneGenerator,
    ws_estimate: Tensor,
    ws_occluded: Tensor,
    image: Tensor,
    c25_input: Tensor,
    c25_aux: Tensor,
    config: PseudoViewConfig,
) -> PseudoViews:
    """Build ``V_i``, ``O_i``, ``M_v``, ``M_o`` and ``v_i`` for every auxiliary camera.

    Args:
        generator: the (frozen) generator.
        ws_estimate: ``1×num_ws×w_dim`` stage-1 latent ``w_e`` (the geometry).
        ws_occluded: ``1×num_ws×w_dim`` latent ``w_o`` for the occluded texture.
        image: ``1×3×H×W`` input photo in ``[-1, 1]`` at the generator's output size.
        c25_input: ``1×25`` input camera ``p0``.
        c25_aux: ``K×25`` auxiliary cameras.
        config: see :class:`PseudoViewConfig`.
    """
    size = generator.config.img_resolution
    if image.shape[-2:] != (size, size):
        raise ValueError(f"the input image is {tuple(image.shape[-2:])}, the generator renders {size}×{size}")
    _, depth_input = render_views(generator, ws_estimate, c25_input[:1])  # 1×1×H×W
    generated, depth_aux = render_views(generator, ws_estimate, c25_aux)  # K×3×H×W, K×1×H×W
    visible_raw = visibility_mask(
        depth_input, c25_input[:1], depth_aux, c25_aux, config.visibility_rel_tol, config.grazing_cos
    )
    warped, _ = backward_warp(image, depth_aux, c25_aux, c25_input[:1])
    mask_binary = erode_mask(visible_raw, config.erode_px)
    mask_visible = feather_mask(mask_binary, config.feather_px)
    visible = warped if config.visible_source == "input" else generated
    if config.occluded_source == "generated":
        occluded, _ = render_views(generator, ws_occluded, c25_aux)
    else:
        # Harmonic fill: Δf = 0 in the hole, f = warped photo on its boundary.
        occluded = poisson_blend(
            torch.zeros_like(warped), warped, 1 - mask_binary, config.poisson_iterations, config.poisson_tol
        )
    if config.blend == "poisson":
        pseudo = poisson_blend(visible, occluded, mask_binary, config.poisson_iterations, config.poisson_tol)
    elif config.blend == "alpha":
        pseudo = alpha_blend(visible, occluded, mask_binary, config.alpha_radius_px)
    else:
        raise ValueError(f"blend must be 'poisson' or 'alpha', got {config.blend!r}")
    return PseudoViews(
        c25=c25_aux,
        visible=visible * (mask_binary > 0),
        occluded=occluded,
        mask_visible=mask_visible,
        mask_occluded=1 - mask_visible,
        pseudo=pseudo,
    )
