"""Numerical parity with the official EG3D code (reference data in tests/data/eg3d_reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfgi3d.cameras import pixel_rays, split_c25
from hfgi3d.generator import TriPlaneGenerator, load_generator, tiny_config
from hfgi3d.generator.renderer import sample_from_planes
from tests.eg3d_pickle_writer import marker_path_for, write_official_pickle
from tests.eg3d_reference import RUNS, TOLERANCES, Reference, eg3d_init_kwargs, load_reference, rebuild_state_dict

VARIANTS = ("tiny", "tiny_planes32")


def _max_abs(actual: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(actual.shape) == expected.shape
    return float(np.abs(actual.detach().numpy().astype(np.float64) - expected.astype(np.float64)).max())


@pytest.fixture(scope="module", params=VARIANTS)
def reference(request: pytest.FixtureRequest) -> Reference:
    return load_reference(request.param)


@pytest.fixture(scope="module", params=["state_dict", "official_pickle"])
def generator(
    request: pytest.FixtureRequest, reference: Reference, tmp_path_factory: pytest.TempPathFactory
) -> TriPlaneGenerator:
    """The reference weights, put in directly or read by ``load_generator`` from an official-format pickle."""
    state = rebuild_state_dict(reference)
    if request.param == "state_dict":
        generator = TriPlaneGenerator(tiny_config(plane_resolution=reference.plane_resolution))
        generator.load_state_dict(state, strict=True)
    else:
        path = tmp_path_factory.mktemp(reference.name) / "network-snapshot.pkl"
        init_kwargs, rendering_kwargs = eg3d_init_kwargs(reference)
        write_official_pickle(path, state, init_kwargs, rendering_kwargs, reference.neural_rendering_resolution)
        generator = load_generator(path)
        assert not marker_path_for(path).exists(), "code embedded in the pickle was executed"
        assert generator.config == tiny_config(plane_resolution=reference.plane_resolution)
    return generator.eval().requires_grad_(False)


def test_rebuilt_weights_match_manifest_checksums(reference: Reference) -> None:
    state = rebuild_state_dict(reference)
    for entry in reference.manifest["weights"]["tensors"]:
        tensor = state[entry["name"]].double()
        assert tensor.sum().item() == pytest.approx(entry["sum_f64"], rel=1e-9, abs=1e-9), entry["name"]
        assert tensor.abs().sum().item() == pytest.approx(entry["abs_sum_f64"], rel=1e-9), entry["name"]
        assert tensor.flatten()[:4].tolist() == pytest.approx(entry["first_values"], rel=0, abs=0), entry["name"]


def test_state_dict_keys_and_shapes_are_official(reference: Reference, generator: TriPlaneGenerator) -> None:
    official = [(t["name"], tuple(t["shape"])) for t in reference.manifest["weights"]["tensors"]]
    ours = [(k, tuple(v.shape)) for k, v in generator.state_dict().items()]
    assert ours == official
    assert generator.num_ws == reference.manifest["architecture_facts"]["num_ws"]


@pytest.mark.parametrize("camera", [0, 1])
def test_rays_match(reference: Reference, camera: int) -> None:
    cam2world, intrinsics = split_c25(torch.from_numpy(reference.array(f"cam{camera}_c")))
    origins, directions = pixel_rays(cam2world, intrinsics, reference.neural_rendering_resolution)
    assert _max_abs(origins, reference.array(f"cam{camera}_ray_origins")) <= TOLERANCES["rays"]
    assert _max_abs(directions, reference.array(f"cam{camera}_ray_directions")) <= TOLERANCES["rays"]


@pytest.mark.parametrize("run", RUNS)
def test_forward_matches_official(reference: Reference, generator: TriPlaneGenerator, run: str) -> None:
    arrays = reference.arrays
    z, c = reference.z(run), reference.c(run)
    with torch.no_grad():
        ws = generator.mapping(z, c, truncation_psi=1.0)
        planes = generator.planes(ws, noise_mode="const")
        out = generator.render(planes, ws, c, deterministic=True)
        probe_coords = torch.from_numpy(arrays["probe_coords"])
        probe_features = sample_from_planes(planes, probe_coords, generator.config.rendering.box_warp)
        probe = generator.sample_mixed(probe_coords, torch.from_numpy(arrays["probe_dirs"]), ws)

    assert _max_abs(ws, arrays[f"{run}__ws"]) <= TOLERANCES["ws"]
    if f"{run}__planes" in arrays:  # the planes32 variant stores the whole planes
        assert _max_abs(planes, arrays[f"{run}__planes"]) <= TOLERANCES["planes"]
    else:
        mid = planes.shape[-1] // 2
        assert _max_abs(planes[..., ::8, ::8], arrays[f"{run}__planes_stride8"]) <= TOLERANCES["planes"]
        assert (
            _max_abs(planes[..., mid - 8 : mid + 8, mid - 8 : mid + 8], arrays[f"{run}__planes_crop"])
            <= (TOLERANCES["planes"])
        )
    channel_sums = planes.double().sum(dim=(-1, -2))
    np.testing.assert_allclose(channel_sums.numpy(), arrays[f"{run}__planes_chan_sum_f64"], rtol=1e-5, atol=1e-2)
    assert _max_abs(out["image_feature"], arrays[f"{run}__feature_image"]) <= TOLERANCES["feature_image"]
    assert _max_abs(out["image_raw"], arrays[f"{run}__image_raw"]) <= TOLERANCES["image_raw"]
    assert _max_abs(out["image_weights"], arrays[f"{run}__weights_sum"]) <= TOLERANCES["weights_sum"]
    assert _max_abs(out["image_depth"], arrays[f"{run}__image_depth"]) <= TOLERANCES["image_depth"]
    assert _max_abs(out["image"], arrays[f"{run}__image"]) <= TOLERANCES["image"]
    assert _max_abs(probe_features, arrays[f"{run}__probe_sampled_features"]) <= TOLERANCES["probe"]
    assert _max_abs(probe["rgb"], arrays[f"{run}__probe_rgb"]) <= TOLERANCES["probe"]
    assert _max_abs(probe["sigma"], arrays[f"{run}__probe_sigma"]) <= TOLERANCES["probe"]


def test_full_forward_equals_mapping_then_synthesis(reference: Reference, generator: TriPlaneGenerator) -> None:
    z, c = reference.z("z1_c1"), reference.c("z1_c1")
    with torch.no_grad():
        out = generator(z, c, noise_mode="const", deterministic=True)
    assert _max_abs(out["image"], reference.array("z1_c1__image")) <= TOLERANCES["image"]
    assert _max_abs(out["image_depth"], reference.array("z1_c1__image_depth")) <= TOLERANCES["image_depth"]


def test_importance_samples_match(reference: Reference, generator: TriPlaneGenerator) -> None:
    from hfgi3d.generator.renderer import render_rays

    run = "z0_c1"
    z, c = reference.z(run), reference.c(run)
    with torch.no_grad():
        ws = generator.mapping(z, c)
        origins, directions = pixel_rays(*split_c25(c), reference.neural_rendering_resolution)
        out = render_rays(
            generator.planes(ws), generator.decoder, origins, directions, generator.config.rendering, deterministic=True
        )
    assert _max_abs(out["depths_fine"], reference.array(f"{run}__depths_fine")) <= TOLERANCES["image_depth"]
