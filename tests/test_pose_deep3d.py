"""Deep3DFaceRecon's pose network and EG3D's label conversion (hfgi3d.pose.deep3d), on files built in the
official format: the released checkpoint cannot be downloaded here, so no accuracy is claimed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hfgi3d.cameras import split_c25
from hfgi3d.cli import main
from hfgi3d.pose.deep3d import (
    ANGLE_SLICE,
    STATE_KEY,
    TRANSLATION_SLICE,
    Deep3DCheckpointError,
    Deep3DPoseEstimator,
    ReconNet,
    camera_from_coefficients,
    load_recon_net,
)

LABELS = Path(__file__).parent / "data" / "eg3d_cameras" / "dataset.json"
_FLIP = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zero_pose_gives_eg3d_frontal_label() -> None:
    """No rotation, no translation: EG3D's camera 10 dm in front, ×0.27, shifted by (0, 0.006, 0.161),
    back to radius 2.7; the axes flipped to OpenCV's; focal 2985.29 / 700 about the centre."""
    c25 = camera_from_coefficients(torch.zeros(1, 3), torch.zeros(1, 3))[0]
    centre = torch.tensor([0.0, 0.006, 2.7 + 0.161], dtype=torch.float64)
    expected = torch.eye(4, dtype=torch.float64)
    expected[:3, :3] = torch.diag(_FLIP)
    expected[:3, 3] = 2.7 * centre / centre.norm()
    torch.testing.assert_close(c25[:16].reshape(4, 4), expected, atol=1e-12, rtol=0)
    assert c25[16:].tolist() == pytest.approx([2985.29 / 700, 0, 0.5, 0, 2985.29 / 700, 0.5, 0, 0, 1], abs=1e-4)


def _coefficients_of(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles and a translation that EG3D's conversion turns into ``label`` (its inverse; the camera
    distance, lost to the radius normalisation, taken as the label's own)."""
    cam2world = label[:16].reshape(4, 4)
    m = (cam2world[:3, :3] * _FLIP).T  # Rz·Ry·Rx
    angles = torch.stack([torch.atan2(m[2, 1], m[2, 2]), -torch.asin(m[2, 0]), torch.atan2(m[1, 0], m[0, 0])])
    centre_dm = (cam2world[:3, 3] - torch.tensor([0.0, 0.006, 0.161], dtype=torch.float64)) / 0.27
    translation = torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64) - m @ centre_dm
    return angles, translation


def test_real_labels_are_reproduced_from_their_coefficients() -> None:
    """The committed official labels are in the conversion's image: orthonormal rotation, radius 2.7,
    fixed intrinsics; inverting and converting gives each back to float64 rounding."""
    labels = [torch.tensor(label, dtype=torch.float64) for _, label in json.loads(LABELS.read_text())["labels"]]
    for label in labels:
        angles, translation = _coefficients_of(label)
        c25 = camera_from_coefficients(angles[None], translation[None])[0]
        torch.testing.assert_close(c25[:16], label[:16], atol=1e-6, rtol=0)  # labels are float32-rounded
        torch.testing.assert_close(c25[16:], label[16:], atol=1e-6, rtol=0)


def test_network_layout_matches_the_released_state_dict() -> None:
    state = ReconNet().state_dict()
    assert len(state) == 332 and "backbone.fc.weight" not in state
    assert state["backbone.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["backbone.layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert [tuple(state[f"final_layers.{i}.weight"].shape) for i in range(7)] == [
        (80, 2048, 1, 1), (64, 2048, 1, 1), (80, 2048, 1, 1), (3, 2048, 1, 1),
        (27, 2048, 1, 1), (2, 2048, 1, 1), (1, 2048, 1, 1),
    ]  # fmt: skip
    assert ReconNet().eval()(torch.rand(2, 3, 224, 224)).shape == (2, 257)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A checkpoint in Deep3DFaceRecon's format (``net_recon`` + an optimizer entry, DataParallel prefixes)
    whose network outputs fixed coefficients: zero final weights, chosen biases."""
    torch.manual_seed(0)
    net = ReconNet()
    coefficients = torch.zeros(257)
    coefficients[ANGLE_SLICE] = torch.tensor([0.1, -0.3, 0.02])  # pitch-ish, yaw-ish, roll
    coefficients[TRANSLATION_SLICE] = torch.tensor([0.05, -0.1, 0.4])
    with torch.no_grad():
        first = 0
        for layer in net.final_layers:
            layer.weight.zero_()
            layer.bias.copy_(coefficients[first : first + layer.out_channels])
            first += layer.out_channels
    path = tmp_path_factory.mktemp("deep3d") / "epoch_20.pth"
    state = {f"module.{key}": value for key, value in net.state_dict().items()}
    torch.save({STATE_KEY: state, "opt_00": {"state": {}, "param_groups": []}}, path)
    return path, coefficients


def test_checkpoint_loads_and_the_estimator_converts_its_pose(checkpoint: tuple[Path, torch.Tensor]) -> None:
    path, coefficients = checkpoint
    net = load_recon_net(path)
    assert not net.training
    estimator = Deep3DPoseEstimator(path)
    crop = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    landmarks = torch.tensor([[188.0, 192.0], [324.0, 192.0], [257.0, 265.0], [201.0, 339.0], [311.0, 339.0]])
    torch.testing.assert_close(estimator.coefficients(crop, landmarks)[0], coefficients.double(), atol=1e-6, rtol=0)
    pose = estimator.estimate(crop, landmarks)
    expected = camera_from_coefficients(coefficients[None, ANGLE_SLICE], coefficients[None, TRANSLATION_SLICE])
    torch.testing.assert_close(pose.c25, expected.float())
    assert pose.estimator == "deep3d" and 0 <= pose.confidence <= 1 and np.isfinite(pose.reprojection_px)
    assert float(split_c25(pose.c25.double())[0][0, :3, 3].norm()) == pytest.approx(2.7)


def test_bad_checkpoints_are_refused_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"epoch_20\.pth"):
        load_recon_net(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(Deep3DCheckpointError, match=r"text\.pth"):
        load_recon_net(tmp_path / "text.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(Deep3DCheckpointError, match="no 'net_recon' entry"):
        load_recon_net(tmp_path / "other.pth")
    torch.save({STATE_KEY: {"conv.weight": torch.zeros(1)}}, tmp_path / "wrong.pth")
    with pytest.raises(Deep3DCheckpointError, match="not Deep3DFaceRecon's network"):
        load_recon_net(tmp_path / "wrong.pth")


def test_cli_asks_for_the_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")  # never read: the options are checked first
    assert main(["preprocess", str(photo), "--output_dir", str(tmp_path / "out"), "--pose_estimator", "deep3d"]) == 2
    assert "--deep3d_checkpoint" in capsys.readouterr().err
    missing = tmp_path / "epoch_20.pth"
    assert (
        main(["preprocess", str(photo), "--output_dir", str(tmp_path / "out"), "--deep3d_checkpoint", str(missing)])
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "Deep3DFaceRecon" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
