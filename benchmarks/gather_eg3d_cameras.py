"""Gather more real photos with EG3D's official cameras, from public repositories, into one folder.

    python benchmarks/gather_eg3d_cameras.py --clones DIR --out FOLDER
    python benchmarks/pose_accuracy.py --data FOLDER          # the accuracy table on them
    python benchmarks/crop_fidelity.py --data FOLDER/eg3d-1-originals

``tests/data/eg3d_cameras`` holds five photos that may be redistributed. Four more repositories
ship EG3D crops with their official labels; some have no licence, so their photos are not
committed here. Clone them into ``DIR`` under their repository names (``DIR/GOAE``,
``DIR/triplane_edit``, ``DIR/3dSwap``, ``DIR/eg3d-1``; a bare mirror works too) and this script
reads the files at the commits below with ``git show``. It writes them to ``FOLDER`` as
``<repository>__<file>`` with one EG3D ``dataset.json`` (``{"labels": [[name, c25], ...]}``, labels
unchanged). It also writes ``FOLDER/eg3d-1-originals``, the video frames of ``eg3d-1`` before
cropping, with EG3D's own MTCNN detections and crops, which ``benchmarks/crop_fidelity.py`` reads.

Provenance, as the repositories state it:

* ``jiangyzy/GOAE``: 12 photos with ``label.json`` (no licence file); its README sends users to
  EG3D's or SPI's preprocessing for new photos, without saying which made these.
* ``three-bee/triplane_edit``: 4 photos made with EG3D's ``preprocess_in_the_wild.py`` (Apache-2.0).
* ``lyx0208/3dSwap``: 10 CelebA-HD crops made with EG3D's preprocessing, each with a 25-value
  ``.npy`` (no licence file). Its camera distance is not rescaled to 2.7; yaw and pitch are
  unaffected. ``2.jpg`` is the photo of TriPlaneNet's example (``tests/data``), left out here. Its
  label differs from TriPlaneNet's by 0.009 rad in yaw and 0.001 in pitch: two runs of EG3D's
  pipeline on the same photo agree to about 0.01 rad.
* ``Florian-Barthel/eg3d-1``: an EG3D fork whose ``dataset_preprocessing/ffhq/1`` holds a video
  (225 frames, one person) run through EG3D's in-the-wild script of August 2022 (NVIDIA Source Code
  License). Nine frames spread over the yaw range are taken.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Source(NamedTuple):
    repository: str
    commit: str
    images: tuple[str, ...]
    labels: str  # a dataset.json-style file, or a pattern with {stem} for one .npy per image


GOAE = Source(
    "jiangyzy/GOAE",
    "ba7ef3d652aef73e7995d29a0261e5d08df406e2",
    tuple(f"example/real_person/{n}.jpg" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13)),
    "example/real_person/label.json",
)
TRIPLANE_EDIT = Source(
    "three-bee/triplane_edit",
    "ad03ff6fb365fb4d05d33091a341085fc49842c4",
    tuple(f"example/{n}.png" for n in (40, 68, 79, 83)),
    "example/dataset.json",
)
THREE_D_SWAP = Source(
    "lyx0208/3dSwap",
    "e451c50c089132317b496beea3da30b9299807e1",
    tuple(f"datasets/CelebA-HD/final_crops/{n}.jpg" for n in (0, 1, 3, 4, 5, 6, 7, 8, 9)),
    "datasets/CelebA-HD/camera_pose/{stem}.npy",
)
FRAMES = (0, 100, 120, 140, 160, 165, 180, 200, 220)
_EG3D_1 = "dataset_preprocessing/ffhq/1"
EG3D_1 = Source(
    "Florian-Barthel/eg3d-1",
    "695d67a1b43234b1c93f3377c61e474aa31316d8",
    tuple(f"{_EG3D_1}/crop/frame{n}.png" for n in FRAMES),
    f"{_EG3D_1}/dataset.json",
)
SOURCES = (GOAE, TRIPLANE_EDIT, THREE_D_SWAP, EG3D_1)


def _show(clone: Path, commit: str, path: str) -> bytes:
    result = subprocess.run(["git", "-C", str(clone), "show", f"{commit}:{path}"], capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{clone}: cannot read {path} at {commit[:12]}: {result.stderr.decode().strip()}")
    return result.stdout


def _labels(clone: Path, source: Source) -> dict[str, list[float]]:
    """``{image path: 25 floats}`` of a source."""
    if "{stem}" not in source.labels:
        table = dict(json.loads(_show(clone, source.commit, source.labels))["labels"])
        return {image: [float(v) for v in table[Path(image).name]] for image in source.images}
    labels = {}
    for image in source.images:
        raw = _show(clone, source.commit, source.labels.format(stem=Path(image).stem))
        labels[image] = [float(v) for v in np.load(io.BytesIO(raw)).reshape(-1)]
    return labels


def gather(clones: Path, out: Path) -> int:
    """Write every source's photos and one ``dataset.json`` to ``out``; returns the photo count."""
    missing = [s.repository for s in SOURCES if not (clones / s.repository.split("/")[1]).exists()]
    if missing:
        raise SystemExit(f"clone these into {clones} first (under their repository names): {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for source in SOURCES:
        clone = clones / source.repository.split("/")[1]
        for image, label in _labels(clone, source).items():
            if len(label) != 25:
                raise SystemExit(f"{source.repository} {image}: expected 25 label values, got {len(label)}")
            name = f"{source.repository.split('/')[1]}__{Path(image).name}"
            (out / name).write_bytes(_show(clone, source.commit, image))
            entries.append([name, label])
    (out / "dataset.json").write_text(json.dumps({"labels": entries}, indent=1))
    originals = out / "eg3d-1-originals"
    originals.mkdir(exist_ok=True)
    clone = clones / EG3D_1.repository.split("/")[1]
    for n in FRAMES:
        for kind, path in (
            ("photo", f"{_EG3D_1}/frame{n}.jpg"),
            ("detections", f"{_EG3D_1}/detections/frame{n}.txt"),
            ("crop", f"{_EG3D_1}/crop/frame{n}.png"),
        ):
            suffix = Path(path).suffix
            (originals / f"frame{n}.{kind}{suffix}").write_bytes(_show(clone, EG3D_1.commit, path))
    return len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clones", type=Path, required=True, help="folder with the four repositories' clones")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the photos and dataset.json to")
    args = parser.parse_args()
    print(f"{gather(args.clones, args.out)} photos with EG3D cameras written to {args.out}")


if __name__ == "__main__":
    main()
