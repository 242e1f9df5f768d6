"""Camera convention: look-at poses, intrinsics, the 25-vector and rays."""

from __future__ import annotations

import math

import pytest
import torch

from hfgi3d import cameras
from tests.eg3d_reference import load_reference


@pytest.mark.parametrize(("camera", "yaw", "pitch"), [(0, 0.0, 0.0), (1, 0.3, -0.15)])
def test_orbit_matches_eg3d_look_at_sampler(camera: int, yaw: float, pitch: float) -> None:
    reference = load_reference("tiny")
    expected = torch.from_numpy(reference.array(f"cam{camera}_c"))
    torch.testing.assert_close(cameras.orbit_c25(yaw, pitch), expected, atol=1e-6, rtol=0)


def test_cam2world_is_a_rigid_opencv_frame_looking_at_the_pivot() -> None:
    yaw = torch.tensor([-0.6, 0.0, 0.35, 0.9])
    pitch = torch.tensor([0.2, -0.25, 0.0, 0.4])
    cam2world = cameras.orbit_cam2world(yaw, pitch)
    rotation = cam2world[:, :3, :3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(4, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(4), atol=1e-6, rtol=0)
    origin = cam2world[:, :3, 3]
    torch.testing.assert_close(origin.norm(dim=-1), torch.full((4,), cameras.FFHQ_RADIUS))
    to_pivot = torch.nn.functional.normalize(torch.tensor(cameras.FFHQ_PIVOT) - origin, dim=-1)
    torch.testing.assert_close(rotation[:, :, 2], to_pivot, atol=1e-6, rtol=0)  # z_cam forward
    assert (rotation[:, 1, 1] < 0).all()  # y_cam points down in a y-up world


def test_yaw_moves_camera_to_positive_x_and_yaw_pitch_inverts() -> None:
    yaw = torch.tensor([0.5, -0.2, 0.0])
    pitch = torch.tensor([0.1, -0.3, 0.25])
    cam2world = cameras.orbit_cam2world(yaw, pitch)
    assert cam2world[1, 0, 3] < 0 < cam2world[0, 0, 3]
    assert cam2world[1, 1, 3] > 0 > cam2world[0, 1, 3]  # positive pitch moves the camera down
    got_yaw, got_pitch = cameras.yaw_pitch_of(cam2world)
    torch.testing.assert_close(got_yaw, yaw, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_pitch, pitch, atol=1e-5, rtol=0)


def test_c25_round_trip_and_shape_errors() -> None:
    cam2world = cameras.orbit_cam2world(torch.tensor([0.1, 0.2]), 0.0)
    intrinsics = cameras.intrinsics_from_focal()
    c25 = cameras.make_c25(cam2world, intrinsics)
    assert c25.shape == (2, 25)
    back_pose, back_k = cameras.split_c25(c25)
    torch.testing.assert_close(back_pose, cam2world)
    torch.testing.assert_close(back_k, intrinsics.expand(2, 3, 3))
    with pytest.raises(ValueError, match="N×25"):
        cameras.split_c25(torch.zeros(2, 16))


def test_focal_from_diagonal_fov() -> None:
    assert cameras.focal_from_fov(18.837) == pytest.approx(4.2627, abs=1e-3)
    half_diagonal = math.sqrt(2) / 2
    assert cameras.focal_from_fov(90.0) == pytest.approx(half_diagonal, rel=1e-9)


def test_rays_pass_through_pixel_centres() -> None:
    c25 = cameras.orbit_c25(0.2, -0.1)
    cam2world, intrinsics = cameras.split_c25(c25)
    resolution = 4
    origins, directions = cameras.pixel_rays(cam2world, intrinsics, resolution)
    assert origins.shape == directions.shape == (1, resolution**2, 3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, resolution**2))
    # Project a point on each ray back with K: it lands on the pixel centre (row-major order).
    world2cam = torch.linalg.inv(cam2world[0])
    points = origins[0] + 2.5 * directions[0]
    points_cam = (world2cam[:3, :3] @ points.T + world2cam[:3, 3:]).T
    uv = (intrinsics[0] @ (points_cam / points_cam[:, 2:]).T).T[:, :2]
    centres = (torch.arange(resolution) + 0.5) / resolution
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    torch.testing.assert_close(uv, torch.stack([cols.flatten(), rows.flatten()], dim=1), atol=1e-5, rtol=0)


def test_orbit_and_grid_helpers() -> None:
    yaw, pitch = cameras.yaw_pitch_orbit(30, 0.35, 0.25)
    assert yaw.shape == pitch.shape == (30,)
    assert yaw.abs().max() <= 0.35 + 1e-6 and pitch[0] == pytest.approx(0.25)
    gy, gp = cameras.yaw_pitch_grid((-0.3, 0.3), (-0.2, 0.2), num_yaw=5, num_pitch=3)
    assert gy.shape == (15,) and gy[:5].tolist() == pytest.approx([-0.3, -0.15, 0.0, 0.15, 0.3])
    assert gp[:5].tolist() == pytest.approx([-0.2] * 5)
    torch.testing.assert_close(cameras.frontal_c25(), cameras.orbit_c25(0.0, 0.0))
