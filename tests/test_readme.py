"""README.md followed top to bottom: every shell command it shows runs, in order, as written.

The commands run in a scratch folder that holds what a user would have at hand: ``ffhq512-128.pkl`` (here
a file in the byte format of NVIDIA's pickle, holding the tiny generator instead of the 500 MB FFHQ one),
``photo.jpg`` (skimage's astronaut) and ``raw_photos/`` (her mirror image), ``face.png`` with its camera
``face.json`` (an aligned crop) and ``configs/`` (the repository's). Each command is run in-process through
:func:`hfgi3d.cli.main`, with the options of :data:`SHRINK` appended, so that a fit or a direction takes
seconds; every option the README gives is parsed and used. Commands that cannot run here are listed in
:data:`NOT_RUN` with the reason; a new kind of command in the README fails this test until it is run or
listed there.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from hfgi3d.cli import main
from tests.eg3d_pickle_writer import write_official_pickle
from tests.eg3d_reference import eg3d_init_kwargs, load_reference, rebuild_state_dict
from tests.presets import shrunk_options
from tests.test_docs_commands import REPO, shell_commands

PREFIX = ["python", "-m", "hfgi3d"]
SHRINK = {
    "fit": [
        *shrunk_options(model__estimate__steps=2, model__occluded__steps=1, model__pseudo_multiview__steps=2),
        "--trainer.precision",
        "32-true",  # bf16 is emulated slowly on many CPUs
    ],
    "directions": ["--samples", "60", "--top", "10"],
}
"""Options appended to a README command of that kind (the later value of an option wins)."""
NOT_RUN = {
    "make demo": "the demo job, run by itself in CI's set-up",
    "make test": "this test suite",
    "make benchmark": "needs CelebA-HQ, the FFHQ weights and GPUs",
    "wandb sync": "needs a network and a W&B account",
}
"""Commands (by their first two words) that this test does not run, and why."""


@pytest.fixture
def workplace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reference = load_reference("tiny")
    init_kwargs, rendering_kwargs = eg3d_init_kwargs(reference)
    write_official_pickle(
        tmp_path / "ffhq512-128.pkl", rebuild_state_dict(reference), init_kwargs, rendering_kwargs,
        reference.neural_rendering_resolution,
    )  # fmt: skip
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(tmp_path / "photo.jpg", quality=95)
    (tmp_path / "raw_photos").mkdir()
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(tmp_path / "raw_photos" / "mirror.jpg", quality=95)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _prepare(command: list[str], folder: Path) -> None:
    """What a user makes by hand before some commands: an aligned photo to fit (``face.png``), a
    painted copy of a result (``painted.png``), their own direction (``smile.pt``)."""
    if "face.png" in command and not (folder / "face.png").exists():
        shutil.copy(folder / "aligned" / "photo.png", folder / "face.png")
        labels = dict(json.loads((folder / "aligned" / "dataset.json").read_text())["labels"])
        (folder / "face.json").write_text(json.dumps(labels["photo.png"]))
    if "painted.png" in command:
        painted = np.array(Image.open(folder / "outputs" / "face" / "input.png"))
        painted[40:80, 45:85] = (255, 0, 255)
        Image.fromarray(painted).save(folder / "painted.png")
    if "smile.pt" in command:
        shutil.copy(folder / "brightness.pt", folder / "smile.pt")


def test_every_readme_command_runs_as_written(workplace: Path) -> None:
    ran, skipped = [], []
    for command in shell_commands((REPO / "README.md").read_text()):
        words = shlex.split(command)
        if words[:3] != PREFIX:
            assert " ".join(words[:2]) in NOT_RUN, f"README command neither run nor listed in NOT_RUN: {command}"
            skipped.append(command)
            continue
        argv = words[3:]
        _prepare(argv, workplace)
        started = time.perf_counter()
        code = main([*argv, *SHRINK.get(argv[0], [])])
        print(f"{time.perf_counter() - started:6.1f} s  {command}")
        assert code == 0, command
        ran.append(argv[0])
    assert ran.count("fit") == 3 and {"convert-eg3d", "render", "preprocess", "edit", "edit-texture"} <= set(ran)
    assert len(skipped) == len(NOT_RUN)
    for result in ("outputs/photo/metrics.json", "outputs/face/metrics.json", "outputs/face/edits/smile/grid.png"):
        assert (workplace / result).is_file(), result
    aligned = sorted(p.parent.name for p in (workplace / "outputs" / "aligned").glob("*/metrics.json"))
    assert aligned == ["mirror", "photo"]  # the second preprocess added the mirror image to aligned/
    assert (workplace / "outputs" / "face" / "texture_edits" / "tattoo" / "metrics.json").is_file()
