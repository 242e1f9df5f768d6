"""hfgi3d checkpoints, load_generator's error handling and the command line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from hfgi3d.cli import main
from hfgi3d.generator import GeneratorLoadError, TriPlaneGenerator, load_generator, save_generator, tiny_config
from tests.eg3d_pickle_writer import marker_path_for, write_official_pickle
from tests.eg3d_reference import eg3d_init_kwargs, load_reference, rebuild_state_dict


@pytest.fixture(scope="module")
def generator() -> TriPlaneGenerator:
    generator = TriPlaneGenerator(tiny_config(plane_resolution=32))
    generator.load_state_dict(rebuild_state_dict(load_reference("tiny_planes32")))
    return generator.eval()


def test_a_float16_checkpoint_is_half_the_size_and_loads_the_rounded_weights(
    generator: TriPlaneGenerator, tmp_path: Path
) -> None:
    save_generator(generator, tmp_path / "fp32.pt")
    save_generator(generator, tmp_path / "fp16.pt", torch.float16)
    ratio = (tmp_path / "fp16.pt").stat().st_size / (tmp_path / "fp32.pt").stat().st_size
    assert 0.45 < ratio < 0.6, ratio  # the weights dominate; the zip index and config stay
    loaded = load_generator(tmp_path / "fp16.pt")
    for key, value in generator.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32, key
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key


def test_checkpoint_round_trip_is_exact(generator: TriPlaneGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_generator(generator, path)
    assert zipfile.is_zipfile(path)
    payload = torch.load(path, weights_only=True)  # no code or custom classes inside
    assert payload["format"] == "hfgi3d.generator"
    loaded = load_generator(path)
    assert not loaded.training
    assert loaded.config == generator.config
    for key, value in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = torch.randn(1, 512)
    c = load_reference("tiny").c("z0_c1")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(z, c, deterministic=True)["image"], generator(z, c, deterministic=True)["image"]
        )


def test_missing_file_names_it_and_says_where_to_get_weights(tmp_path: Path) -> None:
    with pytest.raises(GeneratorLoadError, match=r"ffhq512-128\.pkl") as error:
        load_generator(tmp_path / "ffhq512-128.pkl")
    assert str(tmp_path / "ffhq512-128.pkl") in str(error.value)
    assert "NGC" in str(error.value)


def test_foreign_torch_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(GeneratorLoadError, match="not an hfgi3d generator checkpoint"):
        load_generator(path)


def test_truncated_checkpoint_is_refused(generator: TriPlaneGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_generator(generator, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GeneratorLoadError, match=str(path.name)):
        load_generator(path)


def test_architecture_mismatch_is_reported(generator: TriPlaneGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    save_generator(generator, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["channel_max"] = 16
    torch.save(payload, path)
    with pytest.raises(GeneratorLoadError, match="do not fit"):
        load_generator(path)


def test_render_command_writes_grids_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "render"
    args = [
        "render",
        "--generator",
        "tiny",
        "--seeds",
        "3",
        "--views",
        "2",
        "1",
        "--output_dir",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert (out / "seed0003.png").is_file() and (out / "seed0003_depth.png").is_file()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_convert_command_reports_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["convert-eg3d", str(tmp_path / "missing.pkl"), "--output", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: EG3D network pickle not found: {tmp_path / 'missing.pkl'}; download")
    assert "convert-eg3d" not in err  # not the command that just failed


def test_convert_command_turns_an_official_pickle_into_a_checkpoint(tmp_path: Path) -> None:
    reference = load_reference("tiny_planes32")
    state = rebuild_state_dict(reference)
    init_kwargs, rendering_kwargs = eg3d_init_kwargs(reference)
    pickle_path = tmp_path / "network-snapshot.pkl"
    write_official_pickle(pickle_path, state, init_kwargs, rendering_kwargs, reference.neural_rendering_resolution)
    out = tmp_path / "converted.pt"
    assert main(["convert-eg3d", str(pickle_path), "--output", str(out)]) == 0
    converted = load_generator(out)
    for key, value in state.items():
        assert torch.equal(converted.state_dict()[key], value), key
    assert converted.config.rendering.neural_rendering_resolution == 32
    assert main(["convert-eg3d", str(pickle_path), "--output", str(out)]) == 2  # refuses to overwrite
    assert main(["convert-eg3d", str(pickle_path)]) == 0  # without --output: the pickle's name with .pt
    assert torch.equal(load_generator(tmp_path / "network-snapshot.pt").state_dict()["backbone.mapping.embed.weight"],
                       state["backbone.mapping.embed.weight"])  # fmt: skip
    assert not marker_path_for(pickle_path).exists()


def test_generator_presets_are_the_architectures_they_name() -> None:
    """tiny.yaml is the EG3D reference's configuration (with 32² planes); ffhq512.yaml is EG3D's defaults."""
    from hfgi3d.generator import GeneratorConfig, ffhq512_config
    from hfgi3d.generator.config import config_from_eg3d

    reference = load_reference("tiny")
    init_kwargs, rendering_kwargs = eg3d_init_kwargs(reference)
    official = config_from_eg3d(init_kwargs, rendering_kwargs, reference.neural_rendering_resolution)
    assert tiny_config(plane_resolution=reference.plane_resolution) == official
    assert tiny_config().plane_resolution == 32
    assert ffhq512_config() == GeneratorConfig()


def test_render_command_accepts_an_architecture_yaml(tmp_path: Path) -> None:
    config = str(Path(__file__).parents[1] / "configs" / "generator" / "tiny.yaml")
    args = ["render", "--generator", config, "--seeds", "0", "--views", "1", "1", "--output_dir", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 0
    assert (tmp_path / "seed0000.png").is_file()
