"""Pseudo-view construction with a real (tiny, reference-weight) generator."""

from __future__ import annotations

import math

import pytest
import torch

from hfgi3d.cameras import orbit_c25, split_c25, yaw_pitch_of
from hfgi3d.data.pseudo_views import auxiliary_cameras, build_pseudo_views, render_views
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from tests.eg3d_reference import load_reference, rebuild_state_dict
from tests.presets import OFFICIAL, data_args, pseudo_view_config


@pytest.fixture(scope="module")
def generator() -> TriPlaneGenerator:
    generator = TriPlaneGenerator(tiny_config(plane_resolution=32))
    generator.load_state_dict(rebuild_state_dict(load_reference("tiny_planes32")))
    return generator.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def latents(generator: TriPlaneGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    ws = generator.mapping(z, orbit_c25(torch.zeros(2), torch.zeros(2)))
    return ws[:1], ws[1:]


def test_the_release_preset_orbits_the_authors_30_views() -> None:
    data = data_args(*OFFICIAL)
    cameras = auxiliary_cameras(orbit_c25(0.2, 0.1), data["num_views"], data["pseudo_views"])
    assert cameras.shape == (30, 25)
    yaw, pitch = yaw_pitch_of(split_c25(cameras)[0])
    i = torch.arange(30)
    torch.testing.assert_close(yaw, 0.35 * torch.sin(2 * math.pi * i / 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(pitch, -0.05 + 0.25 * torch.cos(2 * math.pi * i / 30), atol=1e-5, rtol=0)


def test_random_poses_stay_in_range_around_the_input_pose() -> None:
    config = pseudo_view_config(yaw_range_rad=0.35, pitch_range_rad=0.25)
    c_input = orbit_c25(0.3, -0.1)
    cameras = auxiliary_cameras(c_input, 200, config, torch.Generator().manual_seed(0))
    yaw, pitch = yaw_pitch_of(split_c25(cameras)[0])
    assert ((yaw - 0.3).abs() <= 0.35 + 1e-5).all() and ((pitch + 0.1).abs() <= 0.25 + 1e-5).all()
    assert (yaw - 0.3).abs().max() > 0.3 and (pitch + 0.1).abs().max() > 0.2  # the range is used
    torch.testing.assert_close(split_c25(cameras)[1], split_c25(c_input)[1].expand(200, 3, 3))
    again = auxiliary_cameras(c_input, 200, config, torch.Generator().manual_seed(0))
    assert torch.equal(cameras, again)


def test_input_pose_reproduces_the_input_image(generator: TriPlaneGenerator, latents: tuple) -> None:
    ws_e, ws_o = latents
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    c_input = orbit_c25(0.1, 0.05)
    config = pseudo_view_config(grazing_cos=-1.0, blend="alpha", feather_px=0)
    views = build_pseudo_views(generator, ws_e, ws_o, image, c_input, c_input, config)
    inner = views.mask_visible[..., 2:-2, 2:-2] > 0.5
    assert inner.float().mean() > 0.99
    torch.testing.assert_close(
        views.visible[..., 2:-2, 2:-2] * inner, image[..., 2:-2, 2:-2] * inner, atol=2e-4, rtol=0
    )
    torch.testing.assert_close(views.pseudo[..., 2:-2, 2:-2] * inner, image[..., 2:-2, 2:-2] * inner, atol=2e-4, rtol=0)


def test_side_views_have_complementary_masks_and_poisson_keeps_the_boundary(
    generator: TriPlaneGenerator, latents: tuple
) -> None:
    ws_e, ws_o = latents
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    c_input = orbit_c25(0.0, 0.0)
    c_aux = orbit_c25(torch.tensor([0.35, -0.3]), torch.tensor([0.0, 0.2]))
    config = pseudo_view_config(poisson_iterations=500)
    views = build_pseudo_views(generator, ws_e, ws_o, image, c_input, c_aux, config)
    assert len(views) == 2 and views.pseudo.shape == (2, 3, 128, 128)
    torch.testing.assert_close(views.mask_visible + views.mask_occluded, torch.ones_like(views.mask_visible))
    assert 0.0 < views.mask_visible.mean() < 1.0
    expected_occluded, _ = render_views(generator, ws_o, c_aux)
    torch.testing.assert_close(views.occluded, expected_occluded)
    # `visible` is the warped photo on the binary (unfeathered) support of the visible mask.
    outside = (views.visible == 0).all(dim=1, keepdim=True)
    assert 0.0 < outside.float().mean() < 1.0
    torch.testing.assert_close(views.pseudo * outside, views.occluded * outside)
    subset = views.select(1)
    assert subset.c25.shape == (1, 25) and torch.equal(subset.pseudo, views.pseudo[1:])


def test_ablation_sources(generator: TriPlaneGenerator, latents: tuple) -> None:
    ws_e, ws_o = latents
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    c_input, c_aux = orbit_c25(0.0, 0.0), orbit_c25(0.3, 0.0)
    generated_texture = pseudo_view_config(visible_source="generated", blend="alpha")
    views = build_pseudo_views(generator, ws_e, ws_o, image, c_input, c_aux, generated_texture)
    render_e, _ = render_views(generator, ws_e, c_aux)
    keep = views.visible != 0
    torch.testing.assert_close(views.visible[keep], render_e[keep])

    interpolated = pseudo_view_config(occluded_source="interpolated", blend="alpha", poisson_iterations=500)
    views = build_pseudo_views(generator, ws_e, ws_o, image, c_input, c_aux, interpolated)
    seen = views.mask_visible > 0
    torch.testing.assert_close(views.occluded * seen, views.visible * seen, atol=1e-5, rtol=0)
    assert views.occluded.abs().max() <= 1 + 1e-4  # a harmonic fill stays within its boundary values


def test_wrong_image_size_is_refused(generator: TriPlaneGenerator, latents: tuple) -> None:
    ws_e, ws_o = latents
    with pytest.raises(ValueError, match="renders 128×128"):
        build_pseudo_views(
            generator, ws_e, ws_o, torch.zeros(1, 3, 64, 64), orbit_c25(0, 0), orbit_c25(0.1, 0), pseudo_view_config()
        )
