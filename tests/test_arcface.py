"""ArcFace IResNet against the released arcface_torch checkpoint layout; loading, embeddings, similarity; FaceNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hfgi3d.faces import NoFaceError, align_arcface, detect_best_faces, make_detector
from hfgi3d.metrics.arcface import (
    ARCFACE_LAYERS,
    EMBEDDING_DIM,
    FACENET_SIZE,
    IResNet,
    embed,
    facenet_crops,
    facenet_similarity,
    facenet_weights_path,
    identity_similarity,
    infer_arcface_arch,
    load_arcface,
    load_facenet,
)

# arcface_torch/backbones/iresnet.py, written out independently of hfgi3d's module:
RELEASED_LAYERS = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}  # iresnet50 / iresnet100
RELEASED_WIDTHS = (64, 128, 256, 512)  # layer1..layer4 planes; the stem has 64 channels
RELEASED_FC_IN = 512 * 7 * 7  # `fc_scale = 7 * 7`: 112 px halved four times
RELEASED_BN_EPS = 1e-5
# state-dict entries: stem conv + BN (5 tensors) + PReLU = 7; per block BN·3 (15) + conv·2 + PReLU = 18;
# first block of each stage + 1×1 conv + BN = 6; head BN2d (5) + fc (2) + BN1d (5) = 12.
RELEASED_KEY_COUNT = {"r50": 7 + 24 * 18 + 4 * 6 + 12, "r100": 7 + 49 * 18 + 4 * 6 + 12}  # 475, 925
UNIT_ATOL = 1e-5
PHOTO_SIZE_PX = 256  # the astronaut's face is still ~45 px wide, well above MTCNN's 20 px minimum
VGGFACE2_IDENTITIES = 8631  # classes of the released FaceNet VGGFace2 classifier head


def _bn(shapes: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def released_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of an arcface_torch ``backbone.pth``, from the official IResNet definition."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3)}
    _bn(shapes, "bn1", 64)
    shapes["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip(RELEASED_WIDTHS, RELEASED_LAYERS[arch], strict=True), start=1):
        for index in range(blocks):
            prefix, cin = f"layer{stage}.{index}", inplanes if index == 0 else planes
            _bn(shapes, f"{prefix}.bn1", cin)
            shapes[f"{prefix}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(shapes, f"{prefix}.bn2", planes)
            shapes[f"{prefix}.prelu.weight"] = (planes,)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{prefix}.bn3", planes)
            if index == 0:  # every stage starts with stride 2, so its first block downsamples
                shapes[f"{prefix}.downsample.0.weight"] = (planes, cin, 1, 1)
                _bn(shapes, f"{prefix}.downsample.1", planes)
        inplanes = planes
    _bn(shapes, "bn2", 512)
    shapes["fc.weight"] = (512, RELEASED_FC_IN)
    shapes["fc.bias"] = (512,)
    _bn(shapes, "features", 512)
    return shapes


def synthetic_checkpoint(arch: str, seed: int = 0) -> dict[str, Tensor]:
    """Random weights under the released key names and shapes, scaled so a forward pass stays tame."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in released_shapes(arch).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("prelu.weight"):
            state[key] = torch.full(shape, 0.25)
        elif len(shape) == 1:  # BatchNorm scales
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:  # conv / linear weights, He-scaled
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    state = synthetic_checkpoint("r50")
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def arcface_r50(r50_checkpoint: tuple[Path, dict[str, Tensor]]) -> IResNet:
    return load_arcface(r50_checkpoint[0])


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return make_detector()


@pytest.fixture(scope="module")
def astronaut() -> Tensor:
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1  # 1×3×512×512
    return F.interpolate(photo, size=PHOTO_SIZE_PX, mode="area")  # smaller: MTCNN's pyramid costs ∝ pixels


# ----------------------------------------------------------------------------------------------
# Architecture vs. the released layout


def test_expected_table_spot_checks() -> None:
    """The hand-derived table itself, at the stem, a downsampling block and the head."""
    shapes = released_shapes("r50")
    assert len(shapes) == RELEASED_KEY_COUNT["r50"] == 475
    assert len(released_shapes("r100")) == RELEASED_KEY_COUNT["r100"] == 925
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["prelu.weight"] == (64,)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
    assert shapes["layer2.0.bn1.weight"] == (64,)
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer3.13.conv2.weight"] == (256, 256, 3, 3)
    assert "layer3.14.conv1.weight" not in shapes and "layer2.1.downsample.0.weight" not in shapes
    assert shapes["bn2.running_var"] == (512,)
    assert shapes["fc.weight"] == (512, 25088)
    assert shapes["features.weight"] == (512,)


@pytest.mark.parametrize("arch", ["r50", "r100"])
def test_state_dict_has_the_released_keys_and_shapes(arch: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = IResNet(ARCFACE_LAYERS[arch])
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert ours == released_shapes(arch)


def test_blocks_stride_on_the_second_conv_and_use_eps_1e5() -> None:
    with torch.device("meta"):
        model = IResNet(ARCFACE_LAYERS["r50"])
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        first = stage[0]
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
        assert isinstance(first.downsample, nn.Sequential) and first.downsample[0].stride == (2, 2)
        assert all(block.conv2.stride == (1, 1) and block.downsample is None for block in stage[1:])
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert norms and all(m.eps == RELEASED_BN_EPS for m in norms)
    assert isinstance(model.features, nn.BatchNorm1d)


def test_trunk_ends_at_7x7(arcface_r50: IResNet) -> None:
    captured: list[Tensor] = []
    handle = arcface_r50.layer4.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.no_grad():
            arcface_r50(torch.zeros(1, 3, 112, 112))
    finally:
        handle.remove()
    assert captured[0].shape == (1, 512, 7, 7)


def test_arch_is_inferred_from_block_counts() -> None:
    for arch in ("r50", "r100"):
        assert infer_arcface_arch(dict.fromkeys(released_shapes(arch), torch.zeros(0))) == arch
    with pytest.raises(ValueError, match="matches no supported IResNet"):
        infer_arcface_arch({"layer1.0.conv1.weight": torch.zeros(0)})


# ----------------------------------------------------------------------------------------------
# Loading


def test_load_synthetic_release(arcface_r50: IResNet, r50_checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    _, saved = r50_checkpoint
    loaded = arcface_r50.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert not arcface_r50.training
    assert not any(parameter.requires_grad for parameter in arcface_r50.parameters())


def test_missing_checkpoint_says_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "backbone.pth"
    with pytest.raises(FileNotFoundError) as error:
        load_arcface(missing)
    message = str(error.value)
    assert str(missing) in message and "evaluation.metrics.arcface_checkpoint" in message and "arcface_torch" in message


def test_wrong_keys_are_listed(tmp_path: Path, r50_checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    _, saved = r50_checkpoint
    renamed = {("fc.weights" if key == "fc.weight" else key): value.half() for key, value in saved.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"missing keys \['fc.weight'\].*unexpected keys \['fc.weights'\]"):
        load_arcface(path, "r50")


def test_wrong_arch_is_reported(r50_checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    with pytest.raises(ValueError, match=r"IResNet-r100.*missing keys \['layer2.4"):
        load_arcface(r50_checkpoint[0], "r100")


def test_non_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_arcface(path)


# ----------------------------------------------------------------------------------------------
# Embeddings and similarity


def test_embed_gives_unit_512d_vectors(arcface_r50: IResNet) -> None:
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    embeddings = embed(arcface_r50, faces)
    assert embeddings.shape == (3, EMBEDDING_DIM) and bool(embeddings.isfinite().all())
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3), rtol=0, atol=UNIT_ATOL)
    with pytest.raises(ValueError, match="112"):
        embed(arcface_r50, torch.zeros(1, 3, 128, 128))


def test_embed_refuses_a_training_model() -> None:
    with torch.device("meta"):
        model = IResNet(ARCFACE_LAYERS["r50"])  # a fresh module is in training mode
    with pytest.raises(ValueError, match="eval"):
        embed(model, torch.zeros(1, 3, 112, 112))


def test_identity_similarity_of_a_photo_with_itself_is_one(
    arcface_r50: IResNet, detector: nn.Module, astronaut: Tensor
) -> None:
    similarity = identity_similarity(arcface_r50, detector, astronaut, astronaut)
    assert similarity.shape == (1,)
    torch.testing.assert_close(similarity, torch.ones(1), rtol=0, atol=UNIT_ATOL)
    # Each image is detected and aligned on its own: the same as doing it by hand.
    shifted = astronaut.roll(5, dims=-1)  # the face moves 5 px to the right
    by_hand = [
        embed(arcface_r50, align_arcface(x, detect_best_faces(detector, x).landmarks)) for x in (astronaut, shifted)
    ]
    batch = identity_similarity(arcface_r50, detector, torch.cat([astronaut, shifted]), torch.cat([shifted, astronaut]))
    expected = (by_hand[0] * by_hand[1]).sum(dim=1)
    torch.testing.assert_close(batch, torch.cat([expected, expected]))


def test_identity_similarity_names_a_faceless_image(
    arcface_r50: IResNet, detector: nn.Module, astronaut: Tensor
) -> None:
    with pytest.raises(NoFaceError, match=r"render\[0\]"):
        identity_similarity(arcface_r50, detector, astronaut, torch.zeros_like(astronaut), names=("photo", "render"))


# ----------------------------------------------------------------------------------------------
# FaceNet (optional; weights are never downloaded here)


def test_facenet_without_cached_weights_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "checkpoints" / "20180402-114759-vggface2.pt"
    assert facenet_weights_path() == expected
    with pytest.raises(FileNotFoundError, match=r"20180402-114759-vggface2\.pt"):
        load_facenet()


def test_facenet_crops_standardise_like_facenet_pytorch() -> None:
    value = 0.5  # 8-bit 191.25 → (191.25 − 127.5) / 128
    images = torch.full((2, 3, 100, 80), value)
    crops = facenet_crops(images, torch.tensor([[10.7, 20.2, 60.9, 90.0], [-5.0, -5.0, 200.0, 200.0]]))
    assert crops.shape == (2, 3, FACENET_SIZE, FACENET_SIZE)
    torch.testing.assert_close(crops, torch.full_like(crops, (127.5 * (value + 1) - 127.5) / 128))


def test_facenet_loads_a_cached_state_dict_with_its_classifier_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detector: nn.Module, astronaut: Tensor
) -> None:
    """Random weights in the layout of the VGGFace2 release (with its 8631-way `logits` head)."""
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    facenet_weights_path().parent.mkdir(parents=True)
    torch.save(InceptionResnetV1(classify=True, num_classes=VGGFACE2_IDENTITIES).state_dict(), facenet_weights_path())
    model = load_facenet()
    assert not model.training and not model.classify and not hasattr(model, "logits")
    similarity = facenet_similarity(model, detector, astronaut, astronaut)
    torch.testing.assert_close(similarity, torch.ones(1), rtol=0, atol=UNIT_ATOL)


def test_real_facenet_similarity_of_a_photo_with_itself_is_one(detector: nn.Module, astronaut: Tensor) -> None:
    if not facenet_weights_path().is_file():
        pytest.skip(f"FaceNet VGGFace2 weights not cached at {facenet_weights_path()} (no download in tests)")
    model = load_facenet()
    similarity = facenet_similarity(model, detector, astronaut, astronaut)
    torch.testing.assert_close(similarity, torch.ones(1), rtol=0, atol=UNIT_ATOL)
