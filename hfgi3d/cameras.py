"""Cameras in EG3D's convention: look-at poses, normalized intrinsics and the 25-vector.

Convention:
    World space is y-up; the head sits near the origin. EG3D's cameras lie on a sphere of
    radius 2.7 around the world origin and look at the pivot ``[0, 0, 0.2]``. A camera is
    a ``cam2world`` 4×4 matrix in the OpenCV convention (camera x right, y down,
    z forward, i.e. it looks along ``+z_cam``).
    Intrinsics are *normalized* by the image size: ``fx = fy = 4.2647`` and
    ``cx = cy = 0.5`` for EG3D's FFHQ models, so pixel ``(col, row)`` of an ``R×R``
    image has normalized coordinates ``((col + 0.5) / R, (row + 0.5) / R)`` (pixel
    centres). EG3D's 25-vector is ``c25 = [cam2world.flatten() (16), K.flatten() (9)]``,
    both row-major.

    Yaw and pitch are offsets in radians from the frontal view, as in EG3D's
    ``LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, ...)``: positive yaw moves the
    camera towards ``+x`` world, positive pitch moves it down (towards ``-y`` world).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

FFHQ_FOCAL = 4.2647
"""Normalized focal length of EG3D's FFHQ and AFHQ models."""
FFHQ_RADIUS = 2.7
"""Camera distance from the world origin in EG3D's FFHQ models (world units)."""
FFHQ_PIVOT = (0.0, 0.0, 0.2)
"""Look-at point of EG3D's FFHQ cameras (world units)."""

_POLAR_EPS = 1e-5  # keeps the camera off the poles, where the look-at frame is undefined


def _normalize(v: Tensor) -> Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def look_at_cam2world(forward_world: Tensor, origin_world: Tensor) -> Tensor:
    """Build OpenCV ``cam2world`` matrices from viewing directions and camera centres.

    Args:
        forward_world: ``N×3`` viewing directions (need not be unit length).
        origin_world: ``N×3`` camera centres.

    Returns:
        ``N×4×4`` cam2world matrices whose columns are right, down, forward and origin;
        the world up axis is ``+y``, so the camera's ``y`` (down) points to ``-y`` world.
    """
    forward = _normalize(forward_world)
    up_world = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device)
    up_world = up_world.expand_as(forward)
    right = -_normalize(torch.linalg.cross(up_world, forward, dim=-1))
    down = _normalize(torch.linalg.cross(forward, right, dim=-1))
    cam2world = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(len(forward), 1, 1)
    cam2world[:, :3, :3] = torch.stack((right, down, forward), dim=-1)
    cam2world[:, :3, 3] = origin_world
    return cam2world


def orbit_cam2world(
    yaw_rad: Tensor | float,
    pitch_rad: Tensor | float,
    radius: float = FFHQ_RADIUS,
    pivot: Sequence[float] = FFHQ_PIVOT,
) -> Tensor:
    """Cameras on a sphere around the world origin looking at ``pivot`` (EG3D's ``LookAtPoseSampler``).

    Args:
        yaw_rad: offset from the frontal view (scalar or ``N`` tensor), radians.
        pitch_rad: offset from the frontal view (scalar or ``N`` tensor), radians.
        radius: distance from the world origin, world units.
        pivot: look-at point, world units.

    Returns:
        ``N×4×4`` float32 cam2world matrices.
    """
    yaw = torch.as_tensor(yaw_rad, dtype=torch.float32).reshape(-1, 1)
    pitch = torch.as_tensor(pitch_rad, dtype=torch.float32).reshape(-1, 1)
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    theta = math.pi / 2 + yaw  # azimuth, pi/2 = frontal
    polar = torch.clamp(math.pi / 2 + pitch, _POLAR_EPS, math.pi - _POLAR_EPS)
    # EG3D maps the polar angle through arccos(1 - 2 v / pi); it is the identity at the
    # equator and keeps released poses bit-compatible.
    phi = torch.arccos(1 - 2 * (polar / math.pi))
    origin_world = torch.cat(
        (
            radius * torch.sin(phi) * torch.cos(math.pi - theta),
            radius * torch.cos(phi),
            radius * torch.sin(phi) * torch.sin(math.pi - theta),
        ),
        dim=1,
    )  # N×3, camera centre; the sphere is centred on the world origin, not on the pivot
    pivot_world = torch.tensor(pivot, dtype=torch.float32).expand_as(origin_world)
    return look_at_cam2world(pivot_world - origin_world, origin_world)


def intrinsics_from_focal(focal: float = FFHQ_FOCAL, principal: float = 0.5) -> Tensor:
    """Normalized 3×3 intrinsics with square pixels and the principal point at the centre."""
    return torch.tensor([[focal, 0.0, principal], [0.0, focal, principal], [0.0, 0.0, 1.0]], dtype=torch.float32)


def focal_from_fov(fov_diagonal_deg: float) -> float:
    """Normalized focal length for EG3D's field of view, which is measured along the diagonal.

    EG3D's ``FOV_to_intrinsics`` uses ``1 / (tan(fov / 2) * 1.414)``: the half-diagonal of
    a unit image is ``sqrt(2) / 2``. FFHQ's 18.837° gives 4.2634 (released labels use 4.2647).
    """
    return 1.0 / (math.tan(math.radians(fov_diagonal_deg) / 2) * math.sqrt(2.0))


def make_c25(cam2world: Tensor, intrinsics: Tensor) -> Tensor:
    """Pack ``N×4×4`` cam2world and ``3×3`` or ``N×3×3`` intrinsics into ``N×25`` labels."""
    intrinsics = intrinsics.to(cam2world).expand(len(cam2world), 3, 3)
    return torch.cat((cam2world.reshape(-1, 16), intrinsics.reshape(-1, 9)), dim=1)


def split_c25(c25: Tensor) -> tuple[Tensor, Tensor]:
    """Unpack ``N×25`` labels into ``N×4×4`` cam2world and ``N×3×3`` intrinsics."""
    if c25.ndim != 2 or c25.shape[1] != 25:
        raise ValueError(f"expected camera labels of shape N×25, got {tuple(c25.shape)}")
    return c25[:, :16].reshape(-1, 4, 4), c25[:, 16:25].reshape(-1, 3, 3)


def offset_c25(
    c25: Tensor, angles_rad: Tensor, translation: Tensor | None = None, pivot: Sequence[float] = FFHQ_PIVOT
) -> Tensor:
    """``c25`` moved by small pose offsets, differentiably (stage 1's camera refinement).

    ``angles_rad = (yaw, pitch, roll)``: yaw turns the camera about the world's vertical axis through
    ``pivot`` (positive towards ``+x``, as :func:`orbit_c25`), pitch about the world's ``x`` axis
    through ``pivot`` (positive moves it down), roll about the camera's own viewing axis.
    ``translation`` (world units, 3) then moves the camera centre. Intrinsics are unchanged.
    """
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    cam2world, intrinsics = split_c25(c25)
    zero = angles_rad.new_zeros(())
    yaw, pitch, roll = angles_rad.unbind()
    turn = axis_angle_to_rotation_matrix(
        torch.stack([torch.stack([zero, yaw, zero]), torch.stack([pitch, zero, zero])])
    )
    world = turn[0] @ turn[1]  # 3×3: pitch first, then yaw
    spin = axis_angle_to_rotation_matrix(torch.stack([zero, zero, roll])[None])[0]
    centre = torch.as_tensor(pivot, dtype=c25.dtype, device=c25.device)
    rotation = world @ cam2world[:, :3, :3] @ spin
    origin = (cam2world[:, :3, 3] - centre) @ world.T + centre
    if translation is not None:
        origin = origin + translation
    bottom = cam2world[:, 3:, :]
    moved = torch.cat([torch.cat([rotation, origin[:, :, None]], dim=2), bottom], dim=1)
    return make_c25(moved, intrinsics)


def orbit_c25(
    yaw_rad: Tensor | float,
    pitch_rad: Tensor | float,
    radius: float = FFHQ_RADIUS,
    pivot: Sequence[float] = FFHQ_PIVOT,
    focal: float = FFHQ_FOCAL,
) -> Tensor:
    """``N×25`` labels of look-at cameras at the given yaw/pitch offsets (radians)."""
    return make_c25(orbit_cam2world(yaw_rad, pitch_rad, radius, pivot), intrinsics_from_focal(focal))


def frontal_c25(focal: float = FFHQ_FOCAL) -> Tensor:
    """The ``1×25`` frontal camera that EG3D uses to condition the mapping network."""
    return orbit_c25(0.0, 0.0, focal=focal)


def yaw_pitch_grid(
    yaw_range_rad: tuple[float, float], pitch_range_rad: tuple[float, float], num_yaw: int, num_pitch: int
) -> tuple[Tensor, Tensor]:
    """A row-major ``num_pitch × num_yaw`` grid of offsets, flattened to two vectors (radians)."""
    pitch, yaw = torch.meshgrid(
        torch.linspace(*pitch_range_rad, num_pitch), torch.linspace(*yaw_range_rad, num_yaw), indexing="ij"
    )
    return yaw.reshape(-1), pitch.reshape(-1)


def yaw_pitch_orbit(
    num_frames: int, yaw_amplitude_rad: float = 0.35, pitch_amplitude_rad: float = 0.25, pitch_offset_rad: float = 0.0
) -> tuple[Tensor, Tensor]:
    """An elliptic orbit of offsets (radians): ``yaw = a sin(2πi/n)``, ``pitch = o + b cos(2πi/n)``."""
    t = 2 * math.pi * torch.arange(num_frames, dtype=torch.float32) / num_frames
    return yaw_amplitude_rad * torch.sin(t), pitch_offset_rad + pitch_amplitude_rad * torch.cos(t)


def yaw_pitch_of(cam2world: Tensor) -> tuple[Tensor, Tensor]:
    """Yaw/pitch offsets (radians) of camera centres seen from the world origin.

    The inverse of :func:`orbit_cam2world` (whatever its pivot); for other cameras it
    reports the angles of the centre's direction.
    """
    origin_world = cam2world[:, :3, 3]
    radius = torch.linalg.vector_norm(origin_world, dim=-1)
    phi = torch.arccos(torch.clamp(origin_world[:, 1] / radius, -1.0, 1.0))
    polar = math.pi * (1 - torch.cos(phi)) / 2
    theta = math.pi - torch.atan2(origin_world[:, 2], origin_world[:, 0])
    return theta - math.pi / 2, polar - math.pi / 2


def pixel_rays(cam2world: Tensor, intrinsics: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """World-space rays through pixel centres, row-major (``index = row * R + col``).

    Args:
        cam2world: ``N×4×4``.
        intrinsics: ``N×3×3`` normalized (skew is honoured as EG3D does).
        resolution: ``R``, the square image size in pixels.

    Returns:
        ``(origins_world, directions_world)``, both ``N×R²×3``; directions are unit length.
    """
    n = len(cam2world)
    device, dtype = cam2world.device, cam2world.dtype
    centres = (torch.arange(resolution, device=device, dtype=dtype) + 0.5) / resolution
    v_ndc, u_ndc = torch.meshgrid(centres, centres, indexing="ij")  # R×R each, row-major
    u = u_ndc.reshape(1, -1)  # 1×M
    v = v_ndc.reshape(1, -1)
    fx, fy = intrinsics[:, 0, 0:1], intrinsics[:, 1, 1:2]
    cx, cy, skew = intrinsics[:, 0, 2:3], intrinsics[:, 1, 2:3], intrinsics[:, 0, 1:2]
    x_cam = (u - cx + cy * skew / fy - skew * v / fy) / fx  # N×M
    y_cam = (v - cy) / fy
    points_cam = torch.stack((x_cam, y_cam, torch.ones_like(x_cam), torch.ones_like(x_cam)), dim=-1)  # N×M×4
    points_world = torch.bmm(cam2world, points_cam.transpose(1, 2)).transpose(1, 2)[..., :3]
    origins_world = cam2world[:, :3, 3]
    directions_world = torch.nn.functional.normalize(points_world - origins_world[:, None], dim=2)
    return origins_world[:, None].expand(n, resolution * resolution, 3), directions_world
