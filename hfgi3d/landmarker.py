"""MediaPipe's Face Landmarker as hfgi3d runs it (the default pose estimator of ``preprocess`` and the
``smile`` scorer): built from a ``face_landmarker.task`` file in IMAGE mode for one face, and run on
``H×W×3`` uint8 RGB arrays, with the native start-up lines of MediaPipe and TF Lite kept off the console.

MediaPipe's C++ code and TF Lite write straight to the process's stderr (file descriptor 2), past
Python's ``sys.stderr`` and its logging: "WARNING: Logging before InitGoogle() ...", "INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.", and glog-style ``W0000 ...`` lines about the graph's set-up.
They say nothing to a user, so :func:`native_chatter_dropped` catches descriptor 2 while MediaPipe
runs and writes back every other line (errors included).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

NATIVE_CHATTER = re.compile(
    r"^(WARNING: Logging before InitGoogle\(\)"
    r"|INFO: Created TensorFlow Lite .*delegate"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)
"""Lines of MediaPipe's and TF Lite's native code that are dropped: glog's info and warning lines
(``I``/``W`` then the date), not its errors (``E``, ``F``)."""


@contextmanager
def native_chatter_dropped() -> Iterator[None]:
    """Run the block with descriptor 2 going to a temporary file, then write back to stderr every line
    of it that :data:`NATIVE_CHATTER` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not NATIVE_CHATTER.match(line)))


def ignore_stray_sigprof() -> None:
    """Ignore SIGPROF unless someone handles it. Measured here: after a Face Landmarker has run, a
    later Lightning fit with an offline W&B run in the same process (the test suite; a benchmark
    that preprocesses and fits) was killed by a SIGPROF nobody handles ("Profiling timer expired",
    exit 155), while any handler made it pass. Its default action, ending the process, is never
    wanted; a profiler that handles the signal is left alone."""
    if signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
        signal.signal(signal.SIGPROF, signal.SIG_IGN)


def open_face_landmarker(task: Path, blendshapes: bool = False) -> Any:
    """A ``mediapipe.tasks.vision.FaceLandmarker`` for one face per image (IMAGE mode, MediaPipe's
    default 0.5 confidence thresholds), with the face blendshapes if asked. The caller closes it
    (``landmarker.close()``) while mediapipe is still importable: its own ``__del__`` fails at
    interpreter exit."""
    import mediapipe as mp

    options = mp.tasks.vision.FaceLandmarkerOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(task)),
        running_mode=mp.tasks.vision.RunningMode.IMAGE,
        num_faces=1,
        output_face_blendshapes=blendshapes,
    )
    with native_chatter_dropped():
        landmarker = mp.tasks.vision.FaceLandmarker.create_from_options(options)
    ignore_stray_sigprof()
    return landmarker


def detect(landmarker: Any, pixels: np.ndarray) -> Any:
    """The landmarker's result for one ``H×W×3`` uint8 RGB image."""
    import mediapipe as mp

    # mediapipe reads the buffer as packed rows: a strided view would be read wrongly.
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
    with native_chatter_dropped():
        return landmarker.detect(image)
