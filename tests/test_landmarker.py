"""MediaPipe's native start-up lines are kept off the console; everything else it writes still shows."""

from __future__ import annotations

import os

import pytest

from hfgi3d.landmarker import native_chatter_dropped

CHATTER = (
    "WARNING: Logging before InitGoogle() is written to STDERR\n"
    "W0000 00:00:1796578382.641735     334 face_landmarker_graph.cc:181] Sets FaceBlendshapesGraph acceleration\n"
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    "I0000 00:00:1796578382.666280     338 gl_context.cc:357] GL version: 2.1\n"
)
KEPT = "E0000 00:00:1796578382.7     339 graph.cc:12] something failed\nsome other line\n"


def test_native_start_up_lines_are_dropped_and_the_rest_kept(capfd: pytest.CaptureFixture[str]) -> None:
    with native_chatter_dropped():
        os.write(2, (CHATTER + KEPT).encode())  # as native code writes: to descriptor 2, past sys.stderr
    assert capfd.readouterr().err == KEPT


def test_the_lines_come_back_when_the_block_raises(capfd: pytest.CaptureFixture[str]) -> None:
    def failing() -> None:
        with native_chatter_dropped():
            os.write(2, KEPT.encode())
            raise RuntimeError("mediapipe failed")

    with pytest.raises(RuntimeError, match="mediapipe failed"):
        failing()
    os.write(2, b"after\n")
    assert capfd.readouterr().err == KEPT + "after\n"
