"""Measure how far the float32 reference lies from the exact function: ``python -m tests.float32_error``.

The official outputs in ``tests/data/eg3d_reference`` are float32 results of one summation order
on one CPU. Evaluating our generator in float64 on the same weights and inputs gives the same
function to ~1e-12, on any machine, so ``max |reference − float64|`` per recorded tensor is the
reference's own rounding error ``e32``. It is written to ``float32_error.json`` beside each
manifest; the parity tests derive their tolerances from it (see ``tests/eg3d_reference.py``).

:func:`assert_within_float32_error` applies the same idea inside a test: a batched float32
computation is compared with a float64 evaluation of it, against the float32 error of its unbatched
form measured in the same run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from hfgi3d.cameras import pixel_rays, split_c25
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from tests.eg3d_reference import RUNS, VARIANTS, forward_outputs, load_reference, rebuild_state_dict

SPREAD = 5
"""How much larger one float32 evaluation's error may be than another's of the same function: the
float32 parity tests saw up to 2.5× between CPU kernels (``tests/eg3d_reference.py``), and a batched
form that adds up to 3 cameras' or copies' contributions in one reduction carries up to √3 more
random rounding; 2.5·√3 = 4.3, rounded up."""


def relative_errors(values: Mapping[str, Tensor], exact: Mapping[str, Tensor]) -> dict[str, float]:
    """``‖value − exact‖ / ‖exact‖`` per tensor (an all-zero exact tensor: its absolute error)."""
    errors = {}
    for name, value in values.items():
        reference = exact[name].to(value.dtype)
        errors[name] = float((value - reference).detach().norm()) / (float(reference.detach().norm()) or 1.0)
    return errors


def assert_within_float32_error(
    actual: Mapping[str, Tensor], single: Mapping[str, Tensor], exact: Mapping[str, Tensor]
) -> None:
    """``actual`` is as close to ``exact`` as ``single`` is, up to the factor :data:`SPREAD`.

    ``actual`` and ``single`` are float32 evaluations of one computation (its outputs or gradients,
    by name) that differ only in how their sums are grouped (one call per photo or camera against a
    batched, grouped or vmapped one); ``exact`` is the same computation in float64 (exact to
    ~1e-12). ``single``'s relative error is then float32's error for this computation, measured on
    the machine that runs the test with its own kernels, not taken from another machine's rounding.

    The statistic is the root mean square over the tensors of each one's relative error (Euclidean
    norm over the tensor: the maximum moves with the summation order). One tensor's error alone is
    too small a sample: a scalar gradient that sums terms which cancel (a noise strength's) carries
    the error of ``Σ|terms|``, and the ratio of two such errors varies without bound. Over the
    tensors together ``actual``'s error has the size of ``single``'s; :data:`SPREAD` leaves room for
    its spread across vector paths and reduction sizes, and ``eps32`` for a computation float32
    happens to get exactly. A wrong slice, camera or photo makes at least one tensor wrong by a
    sizeable fraction of itself, which alone lifts the statistic far above that bound."""
    assert actual.keys() == single.keys() <= exact.keys()

    def rms(errors: dict[str, float]) -> float:
        return (sum(error**2 for error in errors.values()) / len(errors)) ** 0.5

    e32 = rms(relative_errors(single, exact))
    found = relative_errors(actual, exact)
    bound = SPREAD * e32 + torch.finfo(torch.float32).eps
    worst = max(found, key=found.__getitem__)
    assert rms(found) <= bound, (
        f"relative error {rms(found):.3g} > {bound:.3g} ({SPREAD}·e32, e32 = {e32:.3g}); "
        f"worst: {worst} {found[worst]:.3g}"
    )


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
