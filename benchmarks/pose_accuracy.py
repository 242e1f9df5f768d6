"""Pose accuracy and crop round trip of ``preprocess`` against EG3D's own cameras, on real photos.

    python benchmarks/pose_accuracy.py [--data tests/data/eg3d_cameras] [--json OUT.json]

For every photo of ``--data`` (EG3D crops with their official ``dataset.json`` labels; provenance in
its ``PROVENANCE.md``) prints the official yaw and pitch, how far re-cropping moves MTCNN's landmarks
(pixels at 512²), and each estimator's error (estimate − official, radians): ``pnp5`` (five MTCNN
points, :class:`hfgi3d.pose.PnPPoseEstimator`) and ``mediapipe``
(:class:`hfgi3d.pose.mediapipe.MediaPipePoseEstimator`, when installed) and, given its checkpoint,
``deep3d`` (:class:`hfgi3d.pose.deep3d.Deep3DPoseEstimator`); then mean and max of the absolute
errors per estimator. Everything runs offline on the CPU in a few seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hfgi3d.faces import make_detector
from hfgi3d.pose import PoseEstimator
from hfgi3d.pose.registry import POSE_ESTIMATORS, EstimatorOptions, make_pose_estimator
from hfgi3d.preprocess.accuracy import markdown_tables, measure_folder, summarize

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "eg3d_cameras"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EG3D crops and their dataset.json")
    parser.add_argument("--json", type=Path, help="also write the rows and summaries here")
    parser.add_argument(
        "--deep3d-checkpoint", type=Path, help="also measure deep3d with Deep3DFaceRecon's epoch_20.pth"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # MTCNN's and the fits' many tiny ops gain nothing from threads
    options = EstimatorOptions(checkpoint=args.deep3d_checkpoint)
    estimators: dict[str, PoseEstimator] = {}
    for name, entry in POSE_ESTIMATORS.items():  # every installed one; those with a model file where it is given
        if not entry.installed():
            print(f"{name} is not installed: not measured")
        elif entry.needs_checkpoint is None or options.checkpoint is not None:
            estimators[name] = make_pose_estimator(name, options)
    rows = measure_folder(args.data, estimators, make_detector())
    print(markdown_tables(rows))
    if args.json:
        content = {
            "rows": [row._asdict() | {"errors": {k: e._asdict() for k, e in row.errors.items()}} for row in rows],
            "summary": {key: summarize(rows, key)._asdict() for key in estimators},
        }
        args.json.write_text(json.dumps(content, indent=1))


if __name__ == "__main__":
    main()
