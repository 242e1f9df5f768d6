"""Our crop against EG3D's, on photos that EG3D's in-the-wild script cropped, with its own detections.

    python benchmarks/crop_fidelity.py --data FOLDER/eg3d-1-originals [--json OUT.json]

``FOLDER`` comes from ``benchmarks/gather_eg3d_cameras.py``: for each video frame, the photo
before cropping (``frameN.photo.jpg``), the five points EG3D's MTCNN found in it
(``frameN.detections.txt``, as its ``batch_mtcnn.py`` wrote them) and EG3D's crop
(``frameN.crop.png``). Two questions, per frame:

* **Is the crop geometry EG3D's?** Our crop cut from EG3D's own points, without the roll levelling
  (the in-the-wild script has none), against EG3D's crop: PSNR over the crop's inner 472² and the
  whole-pixel shift that maximises it (EG3D floors its crop box; we keep the mean half pixel).
* **How far do our landmarks move the crop?** The mean distance, crop pixels, between where
  EG3D's points land in the crop cut from our MTCNN's points and in the crop cut from EG3D's:
  our points as detected (``raw``) and truncated to whole pixels as EG3D's are
  (``truncated``, what ``preprocess`` does: :func:`hfgi3d.preprocess.crop.eg3d_landmarks`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hfgi3d.faces import make_detector
from hfgi3d.preprocess.choice import detect_in_photo, select_face
from hfgi3d.preprocess.crop import DEFAULT_SIZE, eg3d_crop_matrix, eg3d_landmarks, transform_points, warp_photo

_MARGIN = 20  # px left out at each border of the PSNR: a shift moves the border in
_MAX_SHIFT = 3


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    inner = (slice(_MARGIN, -_MARGIN), slice(_MARGIN, -_MARGIN))
    mse = float(((a[inner] - b[inner]) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse)


def measure(folder: Path) -> list[dict[str, float | str]]:
    detector = make_detector()
    rows: list[dict[str, float | str]] = []
    for detections in sorted(folder.glob("*.detections.txt")):
        stem = detections.name.removesuffix(".detections.txt")
        photo = np.asarray(Image.open(folder / f"{stem}.photo.jpg").convert("RGB"))
        theirs = np.asarray(Image.open(folder / f"{stem}.crop.png").convert("RGB")).astype(np.float64)
        points = torch.from_numpy(np.loadtxt(detections)).double()[None]  # 1×5×2, EG3D's MTCNN
        unlevelled = torch.zeros(1, dtype=torch.float64)
        matrix = eg3d_crop_matrix(points, DEFAULT_SIZE, unlevelled)
        ours = warp_photo(photo, matrix[0].float(), DEFAULT_SIZE).pixels.astype(np.float64)
        shifts = [(dy, dx) for dy in range(-_MAX_SHIFT, _MAX_SHIFT + 1) for dx in range(-_MAX_SHIFT, _MAX_SHIFT + 1)]
        best = max(shifts, key=lambda s: _psnr(np.roll(ours, s, axis=(0, 1)), theirs))
        found = detect_in_photo(detector, photo)
        landmarks = found.landmarks[select_face(found, stem).detection].double()[None]
        target = transform_points(matrix, points)
        distance = {}
        for key, ours_points in (("raw", landmarks), ("truncated", eg3d_landmarks(landmarks))):
            moved = transform_points(eg3d_crop_matrix(ours_points, DEFAULT_SIZE, unlevelled), points) - target
            distance[key] = float(moved.norm(dim=-1).mean())
        rows.append({
            "frame": stem, "psnr_db": _psnr(ours, theirs), "best_shift_yx": f"{best[0]:+d},{best[1]:+d}",
            "psnr_best_shift_db": _psnr(np.roll(ours, best, axis=(0, 1)), theirs),
            "landmarks_px": float((landmarks - points).norm(dim=-1).mean()),
            "crop_raw_px": distance["raw"], "crop_truncated_px": distance["truncated"],
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="frames with EG3D's detections and crops")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.data)
    if not rows:
        raise SystemExit(f"no *.detections.txt in {args.data}: run benchmarks/gather_eg3d_cameras.py first")
    print(
        "| frame | PSNR vs EG3D's crop | best shift (y,x) | PSNR there | our MTCNN vs EG3D's, photo px "
        "| crop moved: raw / truncated, px |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['frame']} | {r['psnr_db']:.1f} dB | {r['best_shift_yx']} | {r['psnr_best_shift_db']:.1f} dB "
            f"| {r['landmarks_px']:.2f} | {r['crop_raw_px']:.2f} / {r['crop_truncated_px']:.2f} |"
        )
    for key in ("crop_raw_px", "crop_truncated_px"):
        values = [float(r[key]) for r in rows]
        print(f"{key}: mean {np.mean(values):.2f}, max {np.max(values):.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
