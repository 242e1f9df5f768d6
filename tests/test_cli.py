"""The command line a person meets: one line for every mistake, nothing lost on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import hfgi3d
from hfgi3d import fit_reference
from hfgi3d.cli import main
from hfgi3d.data.inputs import SAMPLE_CAMERA, SAMPLE_IMAGE
from hfgi3d.errors import InputError
from hfgi3d.presets import preset_path
from hfgi3d.validation import FitInputs, check_fit_inputs, fit_inputs_from_argv
from tests.interruptions import assert_resumed_like_uninterrupted, printed_resume, write_signal_config
from tests.presets import shrunk_options

REPO = Path(__file__).resolve().parents[1]
ERROR_SECONDS = 5.0  # the bound for answering a bad input in-process (Lightning already imported)
SHRUNK = shrunk_options(
    model__estimate__steps=4, model__pseudo_multiview__steps=6, evaluation__metrics__pose_accuracy=None
)


def _fit_args(photo: Path, camera: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(preset_path("hfgi3d.yaml")), "--config", str(preset_path("demo.yaml")),
        "--data.image", str(photo), "--data.camera", str(camera), "--output_dir", str(out), *extra,
    ]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    """A valid 128² photo and its camera (the bundled sample)."""
    photo = tmp_path / "face.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").resize((128, 128)).save(photo)
    camera = tmp_path / "face.json"
    camera.write_text(SAMPLE_CAMERA.read_text())
    return photo, camera


def _write_camera(values: list[float]) -> Callable[[Path], dict[str, Path]]:
    def make(folder: Path) -> dict[str, Path]:
        (folder / "bad.json").write_text(json.dumps(values))
        return {"camera": folder / "bad.json"}

    return make


def _photo(make_image: Callable[[Path], None]) -> Callable[[Path], dict[str, Path]]:
    def make(folder: Path) -> dict[str, Path]:
        make_image(folder / "bad.png")
        return {"photo": folder / "bad.png"}

    return make


def _truncated_png(path: Path) -> None:
    Image.open(SAMPLE_IMAGE).convert("RGB").resize((128, 128)).save(path)
    path.write_bytes(path.read_bytes()[:2000])


def _interrupted_run(folder: Path) -> dict[str, Path]:
    out = folder / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "interrupted.ckpt").write_bytes(b"a checkpoint")
    return {"out": out}


def _results_exist(folder: Path) -> dict[str, Path]:
    out = folder / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    return {"out": out}


# (case, how to make the bad input, extra arguments, what the one line says)
BAD_INPUTS: list[tuple[str, Callable[[Path], dict[str, Path]], list[str], str]] = [
    ("not an image", _photo(lambda p: p.write_text("hello")), [], "is not an image file"),
    ("truncated PNG", _photo(_truncated_png), [], "truncated or corrupt"),
    ("a folder as the photo", _photo(lambda p: p.mkdir()), [], "is a folder, not a photo"),
    ("7×7 photo", _photo(lambda p: Image.new("RGB", (7, 7)).save(p)), [], "7×7 px, smaller than the generator's 128"),
    ("not square", _photo(lambda p: Image.new("RGB", (160, 128)).save(p)), [], "160×128 px: hfgi3d needs a square"),
    ("missing camera", lambda f: {"camera": f / "none.json"}, [], "camera file not found"),
    ("24 numbers", _write_camera([0.0] * 24), [], "has 24 numbers, expected 25"),
    ("NaN in the camera", _write_camera([0.0] * 24 + [float("nan")]), [], "NaN or infinite values"),
    ("results exist", _results_exist, [], "already holds results (metrics.json); pass --overwrite"),
    ("an interrupted run in the folder", _interrupted_run, [], "holds an interrupted run: resume it with --ckpt_path"),
    (
        "missing checkpoint",
        lambda f: {},
        ["--ckpt_path", "none.ckpt"],
        "checkpoint to resume from not found: none.ckpt",
    ),
    ("missing generator", lambda f: {}, ["--model.generator", "nowhere.pkl"], "generator file not found: nowhere.pkl"),
    ("negative steps", lambda f: {}, ["--model.estimate.steps", "-3"], "estimate.steps must be a whole number ≥ 0"),
    (
        "abbreviated option",
        lambda f: {},
        ["--model.estimate.step", "5"],
        # From the stored reference (before Lightning is imported), else from LightningCLI.
        "unknown option --model.estimate.step: did you mean --model.estimate.steps?"
        if fit_reference.stored() is not None
        else "--model.estimate.step",
    ),
    (
        "a former option name",
        lambda f: {},
        ["--model.estimate_steps", "5"],
        "--model.estimate_steps is now --model.estimate.steps"
        if fit_reference.stored() is not None
        else "--model.estimate_steps",
    ),
    ("a count that is no number", lambda f: {}, ["--model.estimate.steps", "many"], "whole number ≥ 0, got 'many'"),
    ("a value of the wrong type", lambda f: {}, ["--model.estimate.lr", "fast"], "Expected a <class 'float'>"),
]


@pytest.mark.parametrize(("case", "make", "extra", "message"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_gets_one_line_and_exit_code_2_and_changes_nothing(
    case: str,
    make: Callable[[Path], dict[str, Path]],
    extra: list[str],
    message: str,
    good: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = {"photo": good[0], "camera": good[1], "out": tmp_path / "out", **make(tmp_path)}
    before = _snapshot(tmp_path)
    started = time.perf_counter()
    code = main(_fit_args(made["photo"], made["camera"], made["out"], *extra))
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err
    assert elapsed < ERROR_SECONDS
    assert _snapshot(tmp_path) == before  # nothing written, nothing lost


def test_a_bad_photo_is_refused_before_lightning_is_imported(good: tuple[Path, Path], tmp_path: Path) -> None:
    """As a user runs it, in a process of its own: the refusal comes from the pre-check, before
    ``hfgi3d.fit`` (and with it Lightning) is imported."""
    (tmp_path / "notes.png").write_text("hello")
    probe = (
        "import sys; from hfgi3d.cli import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in ('lightning', 'hfgi3d.fit') if m in sys.modules)); sys.exit(code)"
    )
    args = _fit_args(tmp_path / "notes.png", good[1], tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "not an image file" in result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    assert not (tmp_path / "out").exists()


def test_an_overlay_without_its_preset_says_to_give_the_preset_first(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", str(preset_path("photo.yaml")), "--model.generator", "tiny", "--data.image",
            str(good[0]), "--data.camera", str(good[1]), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.estimate.steps, model.occluded.steps, model.pseudo_multiview.steps not set")
    assert "--config configs/hfgi3d.yaml" in err and "\n" not in err and not (tmp_path / "out").exists()


def test_version_and_debug_are_in_the_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"hfgi3d {hfgi3d.__version__}"
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    text = capsys.readouterr().out
    assert exited.value.code == 0 and "--debug" in text and "HFGI3D_DEBUG=1" in text and "``" not in text


def test_fit_help_and_print_config_need_no_photo(capsys: pytest.CaptureFixture[str]) -> None:
    try:  # answered from the stored reference, or by LightningCLI where that is for other versions
        code = main(["fit", "--config", str(preset_path("demo.yaml")), "--help"])
    except SystemExit as exited:
        code = exited.code
    help_text = capsys.readouterr().out
    assert code == 0 and "--data.image" in help_text
    assert "usage: python -m hfgi3d [options] fit" in help_text and "``" not in help_text and ":class:" not in help_text
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(preset_path("hfgi3d.yaml")), "--print_config"])
    assert exited.value.code == 0 and "pseudo_multiview:\n    steps: 3000" in capsys.readouterr().out


def test_the_stored_fit_reference_is_that_of_the_parser() -> None:
    """``hfgi3d/assets/fit_reference.json`` (fast ``fit --help``, option names) matches the parser fit builds."""
    if fit_reference.stored() is None:
        pytest.skip(f"{fit_reference.REFERENCE_FILE.name} was made with other versions of {fit_reference.VERSIONED}")
    # In a process of its own: the help lists the Callback subclasses imported at the time.
    checked = subprocess.run(
        [sys.executable, "-m", "hfgi3d.fit_reference", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(fit_reference.stored() is None, reason="the stored fit reference is for other library versions")
def test_fit_help_and_misspelt_options_are_answered_without_lightning(tmp_path: Path) -> None:
    """As a user runs them, in a fresh process: answered before Lightning is imported. One process runs
    every command in turn (Python keeps what it imported, so nothing may import Lightning on the way)."""
    probe = (
        "import contextlib, io, json, sys; from hfgi3d.cli import main\n"
        "answers = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    imported = sorted(m for m in ('lightning', 'hfgi3d.fit') if m in sys.modules)\n"
        "    answers.append((code, out.getvalue(), err.getvalue(), imported))\n"
        "print(json.dumps(answers))\n"
    )
    preset = str(preset_path("hfgi3d.yaml"))
    refusals = [
        (["--model.estimate.step", "3"], "unknown option --model.estimate.step: did you mean --model.estimate.steps?"),
        (["--data.imge=face.png"], "unknown option --data.imge: did you mean --data.image?"),
        (["--trainer.max_steps", "9"], "--trainer.max_steps cannot be given: fit sets it from --model.estimate.steps"),
    ]
    commands = [
        ["fit", "--help"],
        ["fit", "--config", preset, "--model.estimate.steps", "7", "--help"],
        *(["fit", "--config", preset, *args] for args, _ in refusals),
    ]
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(commands)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout)
    assert all(imported == [] for *_, imported in answers), answers
    shown, with_values, *refused = answers
    assert shown[0] == 0 and shown[1] == fit_reference.stored_help()
    assert with_values[0] == 0 and with_values[1].startswith(str(fit_reference.stored_help()))
    given = with_values[1].split("values given")[1]
    assert "\n  --model.pseudo_multiview.steps 3000\n" in given and "\n  --model.estimate.steps 7\n" in given
    for (code, out, err, _), (_, message) in zip(refused, refusals, strict=True):
        assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1 and out == "", err
    assert not any(tmp_path.iterdir())


def test_options_inside_a_class_valued_option_are_left_to_lightning() -> None:
    if fit_reference.stored() is None:
        pytest.skip("the stored fit reference is for other library versions")
    fit_reference.check_option_names(
        ["--trainer.callbacks+=hfgi3d.callbacks.groundtruth.GroundTruthCurves", "--trainer.callbacks.every_n_steps=5",
         "--trainer.logger.init_args.project", "p", "--print_config=skip_null", "--no_overwrite"]
    )  # fmt: skip
    with pytest.raises(InputError, match=r"unknown option --model\.estimate\.steps\.x"):
        fit_reference.check_option_names(["--model.estimate.steps.x", "3"])


def test_debug_shows_the_traceback(good: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="camera file not found"):
        main([*_fit_args(good[0], tmp_path / "none.json", tmp_path / "out"), "--debug"])


def test_a_grayscale_photo_is_converted_and_said(good: tuple[Path, Path], tmp_path: Path) -> None:
    Image.open(good[0]).convert("L").save(tmp_path / "gray.png")
    notes = check_fit_inputs(FitInputs(generator="tiny", image=str(tmp_path / "gray.png"), camera=str(good[1])))
    assert notes == ["gray.png is grayscale (L): converted to RGB"]


def test_overwrite_is_a_bare_flag_and_options_are_not_abbreviated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fit_inputs_from_argv(["--overwrite"]).overwrite
    assert not fit_inputs_from_argv(["--overwrite", "--no_overwrite"]).overwrite
    assert main(["render", "--seed", "3", "--output_dir", str(tmp_path)]) == 2  # --seed is not --seeds
    assert capsys.readouterr().err.startswith("error: unrecognized arguments: --seed 3")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["edit", "run", "--direction", "d.pt", "--strength", "abc"], "argument --strength: invalid float value"),
        (["edit", "run"], "the following arguments are required: --direction"),
        (["render", "--views", "3"], "argument --views: expected 2 arguments"),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
        (
            ["preprocess", "a.jpg", "--output_dir", "o", "--face-index", "1"],
            "unrecognized arguments: --face-index 1: did you mean --face_index?",
        ),
        (
            ["preprocess", "a.jpg", "aligned/"],
            "unrecognized arguments: aligned/: the results folder is named by an option, --output_dir aligned/",
        ),
        (["preprocess", "a.jpg"], "the following arguments are required: --output_dir"),
        (
            ["directions", "fit", "--generator", "tiny", "--scorer", "mean_luma", "--attribute", "b", "--out", "b.pt"],
            "unrecognized arguments: --out b.pt: did you mean --output?",
        ),
    ],
)
def test_a_bad_option_of_any_command_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "usage:" not in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # three fits; `make test` interrupts and resumes a fit by SIGTERM in tests/test_batch.py
@pytest.mark.usefixtures("interruptible")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_fit_resumes_to_the_result_of_an_uninterrupted_one(
    signum: int, good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupted in stage 2 (after the hand-over), long before the first periodic checkpoint (step 50)."""
    whole = tmp_path / "whole"
    assert main([*_fit_args(*good, whole), *SHRUNK]) == 0
    capsys.readouterr()

    signal_config = write_signal_config(tmp_path / "signal.yaml", 7, signum)
    cut = tmp_path / "cut"
    code = main([*_fit_args(*good, cut), *SHRUNK, "--config", str(signal_config)])
    err = capsys.readouterr().err
    assert code == 128 + signum
    assert not (cut / "metrics.json").exists()
    resume = printed_resume(err)

    assert main(resume.args) == 0
    assert not resume.checkpoint.exists()  # removed once the resumed run finished
    assert_resumed_like_uninterrupted(cut, whole, resume.first_segment)
