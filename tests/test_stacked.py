"""StackedGenerator: N copies of a generator in one call give what N separate generators give."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from torch import Tensor

from hfgi3d.cameras import orbit_c25
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from hfgi3d.generator.stacked import StackedGenerator
from tests.float32_error import assert_within_float32_error

COUNT = 3
CAMERAS = 2


@pytest.fixture(scope="module")
def copies() -> list[TriPlaneGenerator]:
    """Three tiny generators that differ in every weight (as three tuned photos would)."""
    torch.manual_seed(0)
    base = TriPlaneGenerator(tiny_config()).train()
    generators = []
    for index in range(COUNT):
        generator = copy.deepcopy(base)
        with torch.no_grad():
            for parameter in generator.parameters():
                parameter.add_(0.05 * index * torch.randn_like(parameter))
        generators.append(generator)
    return generators


def _stack(generators: list[TriPlaneGenerator], photos_per_call: int = COUNT) -> StackedGenerator:
    stacked = StackedGenerator(generators[0], len(generators), photos_per_call)
    for index, generator in enumerate(generators):
        stacked.load_generator(index, generator)
    return stacked


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ws = torch.randn(COUNT, 1, 512, generator=torch.Generator().manual_seed(1)).expand(-1, 8, -1).contiguous()
    yaw = torch.linspace(-0.3, 0.3, COUNT * CAMERAS)
    cameras = orbit_c25(yaw, 0.1 * yaw).reshape(COUNT, CAMERAS, 25)
    return ws, cameras


@pytest.mark.parametrize("photos_per_call", [COUNT, 2, 1])
def test_one_call_renders_what_each_generator_renders(copies: list[TriPlaneGenerator], photos_per_call: int) -> None:
    stacked = _stack(copies, photos_per_call)
    ws, cameras = _inputs()
    torch.manual_seed(5)  # ray jitter on: every photo draws the jitter a single run from this seed draws
    out = stacked.synthesis(ws, cameras)
    assert out["image"].shape == (COUNT, CAMERAS, 3, 128, 128)
    after = torch.rand(())  # the call leaves the random state where one photo's rendering leaves it
    for index, generator in enumerate(copies):
        torch.manual_seed(5)
        single = generator.synthesis_cameras(ws[index][None], cameras[index], batch_size=CAMERAS)
        assert torch.rand(()) == after
        for key in ("image", "image_depth", "image_raw"):
            torch.testing.assert_close(out[key][index], single[key], atol=2e-5, rtol=1e-4, msg=key)
    torch.manual_seed(5)  # the same, one camera per render call (the inversion's form on a CPU)
    chunked = stacked.synthesis_cameras(ws, cameras, batch_size=1)
    for index, generator in enumerate(copies):
        torch.manual_seed(5)
        single = generator.synthesis_cameras(ws[index][None], cameras[index], batch_size=1)
        torch.testing.assert_close(chunked["image"][index], single["image"], atol=2e-5, rtol=1e-4)
    # The copies differ, so equality above is not an artefact of identical weights.
    assert (out["image"][0] - out["image"][2]).abs().max() > 1e-2


def _float64_gradients(generator: TriPlaneGenerator, ws: Tensor, cameras: Tensor, weight: float) -> dict[str, Tensor]:
    """The exact gradients (to ~1e-12) of ``weight · mean(image²)`` at ``ws`` (``1×num_ws×w_dim``)
    and ``cameras`` (``K×25``): the same network evaluated in float64. Key ``"ws"`` and the parameter names."""
    exact = copy.deepcopy(generator).double()
    exact.zero_grad(set_to_none=True)  # a deep copy carries the float32 gradients along
    ws64 = ws.detach().double().requires_grad_(True)
    image = exact.synthesis_cameras(ws64, cameras.double(), batch_size=CAMERAS, deterministic=True)["image"]
    (weight * image.square().mean()).backward()
    assert ws64.grad is not None
    return {"ws": ws64.grad[0], **{name: p.grad for name, p in exact.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("photos_per_call", [COUNT, 1])
def test_gradients_stay_in_each_photos_slice(copies: list[TriPlaneGenerator], photos_per_call: int) -> None:
    """Each photo's gradients (latent and weights) are its own generator's, to float32 rounding: as close
    to a float64 evaluation of that generator's gradients as its own float32 gradients are."""
    stacked = _stack(copies, photos_per_call)
    ws, cameras = _inputs()
    ws = ws.requires_grad_(True)
    out = stacked.synthesis(ws, cameras, deterministic=True)
    weights = torch.tensor([1.0, 2.0, 3.0]).reshape(-1, 1, 1, 1, 1)
    (out["image"].square() * weights).mean(dim=(1, 2, 3, 4)).sum().backward()
    assert ws.grad is not None
    for index, generator in enumerate(copies):
        generator.zero_grad(set_to_none=True)
        ws_single = ws.detach()[index].clone().requires_grad_(True)
        image = generator.synthesis_cameras(ws_single[None], cameras[index], batch_size=CAMERAS, deterministic=True)
        ((index + 1.0) * image["image"].square().mean()).backward()
        assert ws_single.grad is not None
        single = {"ws": ws_single.grad}
        stacked_grads = {"ws": ws.grad[index]}
        for name, parameter in generator.named_parameters():
            grad = stacked.weights[name.replace(".", "__")].grad
            if parameter.grad is None:  # unused in this rendering mode (the super-resolution noise)
                assert grad is None or grad[index].abs().max() == 0, name
                continue
            assert grad is not None, name
            single[name], stacked_grads[name] = parameter.grad, grad[index]
        exact = _float64_gradients(generator, ws_single[None], cameras[index], index + 1.0)
        assert_within_float32_error(stacked_grads, single, exact)


def test_one_adam_over_the_stack_steps_each_photo_as_its_own_adam(copies: list[TriPlaneGenerator]) -> None:
    """Given the same gradients, one Adam over the stacked weights moves each slice exactly as a
    separate Adam moves its generator. (Gradients themselves agree to fp32 rounding, tested above;
    Adam divides by sqrt(v), which magnifies rounding where a gradient is near zero, so a whole fit
    is compared with a tolerance that allows for it.)"""
    stacked = _stack(copies)
    singles = [copy.deepcopy(generator) for generator in copies]
    adam = torch.optim.Adam(stacked.parameters(), lr=0.01)
    adams = [torch.optim.Adam(generator.parameters(), lr=0.01) for generator in singles]
    noise = torch.Generator().manual_seed(3)
    for _ in range(3):
        for index, generator in enumerate(singles):
            for name, parameter in generator.named_parameters():
                parameter.grad = torch.randn(parameter.shape, generator=noise) * 10.0 ** torch.randint(
                    -9, 0, (), generator=noise
                )
                grad = stacked.weights[name.replace(".", "__")]
                if grad.grad is None:
                    grad.grad = torch.zeros_like(grad)
                grad.grad[index] = parameter.grad
        adam.step()
        adam.zero_grad(set_to_none=True)
        for optimizer in adams:
            optimizer.step()
    for index, generator in enumerate(singles):
        moved = stacked.generator(index)
        for (name, expected), actual in zip(generator.named_parameters(), moved.parameters(), strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-7, rtol=1e-6, msg=name)
            assert not torch.equal(expected, copies[index].get_parameter(name)), name


def test_a_copy_comes_out_as_a_generator_and_modes_follow(copies: list[TriPlaneGenerator]) -> None:
    stacked = _stack(copies)
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    out = stacked.generator(1)
    assert torch.equal(torch.rand(3), expected_draw)  # building the copy left the global RNG alone
    assert isinstance(out, TriPlaneGenerator) and out.training
    for (name, expected), actual in zip(copies[1].state_dict().items(), out.state_dict().values(), strict=True):
        assert torch.equal(actual, expected), name
    stacked.eval()
    assert not stacked._template[0].training and not stacked.generator(0).training
    with pytest.raises(ValueError, match="at least one"):
        StackedGenerator(copies[0], 0)


class _Seen(Exception):
    """Raised by a forward hook once it has what it came for: the rest of the forward pass is skipped."""


def _first_conv_dtype(stacked: StackedGenerator, ws: torch.Tensor, cameras: torch.Tensor) -> torch.dtype:
    """The output dtype of the tri-plane backbone's first convolution under bf16 autocast (the pass stops
    there: bf16 is emulated slowly on most CPUs)."""
    dtypes: list[torch.dtype] = []

    def seen(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        dtypes.append(output.dtype)
        raise _Seen

    hook = stacked.template.backbone.synthesis.b4.conv1.register_forward_hook(seen)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), contextlib.suppress(_Seen):
            stacked.synthesis_cameras(ws, cameras, 1, neural_rendering_resolution=16)
    finally:
        hook.remove()
    assert len(dtypes) == 1
    return dtypes[0]


def test_mixed_precision_reaches_the_convolutions(copies: list[TriPlaneGenerator]) -> None:
    """``torch.func.vmap`` ignores autocast, so under bf16 autocast the photos run one by one, even
    where a call would take all of them, and their convolutions compute in bf16."""
    ws, cameras = _inputs()
    cameras = cameras[:, :1]
    assert _first_conv_dtype(_stack(copies, COUNT), ws, cameras) == torch.bfloat16
    assert _first_conv_dtype(_stack(copies[:1], 1), ws[:1], cameras[:1]) == torch.bfloat16
