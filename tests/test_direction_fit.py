"""`directions fit` on the tiny generator with the model-free mean-luma scorer: the whole pipeline."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from hfgi3d.cameras import frontal_c25
from hfgi3d.cli import main
from hfgi3d.editing import scorers
from hfgi3d.editing.directions import load_direction
from hfgi3d.errors import InputError
from hfgi3d.generator import open_generator

ARGS = ["--generator", "tiny", "--scorer", "mean_luma", "--attribute", "brightness", "--samples", "120",
        "--top", "30", "--chunk", "40", "--batch_size", "20", "--device", "cpu"]  # fmt: skip
SMALL_RUN = ["--samples", "60", "--top", "15", "--chunk", "20"]
"""Half of :data:`ARGS`' renders, in three chunks, for a run that stops before it fits a direction."""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of :data:`ARGS` (its output; the stored scores beside it), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("luma") / "luma.pt"
    assert main(["directions", "fit", *ARGS, "--output", str(out)]) == 0
    return out


def test_the_direction_moves_the_score_it_was_fitted_on(fitted: Path) -> None:
    direction = load_direction(fitted)
    meta = direction.metadata
    assert meta["attribute"] == "brightness" and meta["scorer"] == "mean_luma" and meta["samples"] == 120
    assert 0.5 < meta["accuracy"] <= 1.0
    torch.testing.assert_close(direction.vector.norm(), torch.tensor(1.0))
    # Walking along the direction from the average latent brightens the frontal render.
    generator = open_generator("tiny").eval()
    camera = frontal_c25()
    with torch.no_grad():
        w = generator.mapping(torch.randn(64, generator.config.z_dim, generator=torch.Generator().manual_seed(9)),
                              camera.expand(64, -1)).mean(0, keepdim=True)  # fmt: skip
        luma = [
            float(scorers.mean_luma(generator.synthesis(direction.apply(w, s), camera, deterministic=True)["image"])[0])
            for s in (-3.0, 0.0, 3.0)
        ]
    assert luma[0] < luma[1] < luma[2], luma


def test_a_killed_run_resumes_from_its_score_chunks(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "luma.pt"  # a copy of the fixture's run: its output and stored scores
    shutil.copy(fitted, out)
    shutil.copytree(fitted.parent / ".luma.scores", tmp_path / ".luma.scores")
    first = torch.load(out, weights_only=True)
    chunks = sorted((tmp_path / ".luma.scores").glob("chunk*.pt"))
    assert len(chunks) == 3
    chunks[1].unlink()  # as if the run had been killed while scoring the second chunk
    out.unlink()
    scored: list[int] = []
    original = scorers.mean_luma

    def counting(images: torch.Tensor) -> torch.Tensor:
        scored.append(len(images))
        return original(images)

    monkeypatch.setattr(scorers, "mean_luma", counting)
    assert main(["directions", "fit", *ARGS, "--output", str(out)]) == 0
    assert "SVM accuracy" in capsys.readouterr().out
    assert sum(scored) == 40  # only the missing chunk
    second = torch.load(out, weights_only=True)
    torch.testing.assert_close(second["direction"], first["direction"])
    assert second["metadata"]["accuracy"] == first["metadata"]["accuracy"]
    # Stored scores are never mixed with another run's.
    assert main(["directions", "fit", *ARGS, "--seed", "1", "--output", str(out), "--overwrite"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scorer", "beauty"], "unknown scorer 'beauty'"),
        (["--top", "100"], "--samples ≥ 2·top"),
    ],
)
def test_bad_options_get_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "x.pt"
    assert main(["directions", "fit", *ARGS, *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_an_existing_direction_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pt"
    out.write_bytes(b"keep")
    assert main(["directions", "fit", *ARGS, "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


class _ChannelMeans(torch.nn.Module):
    """A stand-in classifier: outputs each colour channel's mean (N×3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_a_torchscript_classifier_scores_its_chosen_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "means.pt"
    torch.jit.script(_ChannelMeans()).save(str(model))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    green = scorers.make_scorer("classifier", model, output_index=1, input_size=32, input_range="0,1")
    # 64² → 32² by antialiased bilinear: the border taps are renormalised, so the mean moves by ~4e-4.
    torch.testing.assert_close(green(images), (images[:, 1] * 0.5 + 0.5).mean(dim=(1, 2)), atol=2e-3, rtol=0)
    raw = scorers.make_scorer("classifier", model, output_index=1, input_size=64, input_range="-1,1")
    torch.testing.assert_close(raw(images), images[:, 1].mean(dim=(1, 2)), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="does not fit"):
        scorers.make_scorer("classifier", model, output_index=3)(images)
    out = tmp_path / "green.pt"
    args = [
        *ARGS,
        "--scorer",
        "classifier",
        "--classifier",
        str(model),
        "--output_index",
        "1",
        "--classifier_size",
        "32",
        "--samples",  # a third of ARGS' samples: what is checked here is the scorer, not the direction
        "40",
        "--top",
        "10",
    ]
    # A wrong output index stops the run before its first chunk; the corrected run then starts cleanly.
    wrong = [*ARGS, "--scorer", "classifier", "--classifier", str(model), "--output_index", "5"]
    assert main(["directions", "fit", *wrong, "--output", str(out)]) == 2
    assert main(["directions", "fit", *args, "--output", str(out)]) == 0
    metadata = torch.load(out, weights_only=True)["metadata"]
    assert (
        metadata["scorer"] == "classifier"
        and metadata["output_index"] == 1
        and len(metadata["classifier_sha256"]) == 64
    )
    capsys.readouterr()
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"not a model")
    assert main(["directions", "fit", *ARGS, "--scorer", "classifier", "--classifier", str(not_a_model),
                 "--output", str(tmp_path / "j.pt")]) == 2  # fmt: skip
    assert "not a TorchScript model" in capsys.readouterr().err


@pytest.mark.parametrize("faceless", ["every third", "all but every third"])
def test_renders_without_a_face_are_left_out_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, faceless: str
) -> None:
    original = scorers.mean_luma

    def luma_with_faceless_renders(images: torch.Tensor) -> torch.Tensor:
        scores = original(images)
        every_third = torch.arange(len(images)) % 3 == 0  # the 7 renders 0, 3, …, 18 of each batch of 20
        scores[every_third if faceless == "every third" else ~every_third] = torch.nan
        return scores

    monkeypatch.setattr(scorers, "mean_luma", luma_with_faceless_renders)
    out = tmp_path / "luma.pt"
    fits = faceless == "every third"  # the run that stops renders 60 samples, not 120
    code = main(["directions", "fit", *ARGS, *([] if fits else SMALL_RUN), "--output", str(out)])
    captured = capsys.readouterr()
    if fits:  # 42 of 120 without a face leave 78 ≥ 2·top = 60 to rank
        assert code == 0 and "42 of 120 renders had no face and were left out" in captured.out
        metadata = torch.load(out, weights_only=True)["metadata"]
        assert metadata["samples_without_face"] == 42 and all(math.isfinite(v) for v in metadata["score_range"])
        assert 0.5 < metadata["accuracy"] <= 1.0
    else:  # 13 of each 20 without a face: after the third chunk only 21 < 30 can remain
        assert code == 2 and not out.exists()
        last_line = captured.err.splitlines()[-1]  # after the progress bar's
        assert last_line.startswith("error: ") and "no face in 39 of the first 60 renders" in last_line
