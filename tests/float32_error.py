"""Measure how far the float32 reference lies from the exact function: ``python -m tests.float32_error``.

The official outputs in ``tests/data/eg3d_reference`` are float32 results of one summation order
on one CPU. Evaluating our generator in float64 on the same weights and inputs gives the same
function to ~1e-12, on any machine, so ``max |reference − float64|`` per recorded tensor is the
reference's own rounding error ``e32``. It is written to ``float32_error.json`` beside each
manifest; the parity tests derive their tolerances from it (see ``tests/eg3d_reference.py``).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from hfgi3d.cameras import pixel_rays, split_c25
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from tests.eg3d_reference import RUNS, VARIANTS, forward_outputs, load_reference, rebuild_state_dict


def measure(variant: str) -> dict[str, float]:
    reference = load_reference(variant)
    generator = TriPlaneGenerator(tiny_config(plane_resolution=reference.plane_resolution))
    generator.load_state_dict(rebuild_state_dict(reference), strict=True)
    generator = generator.eval().requires_grad_(False).double()
    errors: dict[str, float] = {}
    for run in RUNS:
        for name, value in forward_outputs(generator, reference, run).items():
            expected = reference.array(f"{run}__{name}").astype(np.float64)
            error = float(np.abs(value.numpy() - expected).max())
            errors[name] = max(errors.get(name, 0.0), error)
    for camera in (0, 1):
        c = torch.from_numpy(reference.array(f"cam{camera}_c")).double()
        origins, directions = pixel_rays(*split_c25(c), reference.neural_rendering_resolution)
        for name, value in (("ray_origins", origins), ("ray_directions", directions)):
            error = float(np.abs(value.numpy() - reference.array(f"cam{camera}_{name}")).max())
            errors[name] = max(errors.get(name, 0.0), error)
    return dict(sorted(errors.items()))


def main() -> None:
    for variant, folder in VARIANTS.items():
        errors = measure(variant)
        record = {
            "what": "max |float32 reference - float64 evaluation of the same network| over the 4 runs "
            "(rays: over the 2 cameras); the reference's own rounding error e32 (tests/float32_error.py)",
            "torch": torch.__version__,
            "e32": errors,
        }
        (folder / "float32_error.json").write_text(json.dumps(record, indent=1) + "\n")
        print(variant, {name: f"{value:.2e}" for name, value in errors.items()})


if __name__ == "__main__":
    main()
