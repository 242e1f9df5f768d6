"""Time N generators with their own weights: one batched call against a loop, and vmap against
a hand-written grouped convolution.

    python benchmarks/stacked_generator_speed.py --config tiny256 --photos 1 4 8 --cameras 2

Batched inversion (one process inverting N photos) tunes one copy of the generator per photo.
Two ways to run the copies at once were candidates: ``torch.func`` (``vmap`` over
``functional_call``, :class:`hfgi3d.generator.stacked.StackedGenerator`), or layers rewritten to
take a leading photo dimension on their kernels (a grouped convolution with ``groups = N``). The
script times, forward and backward (training mode, as in the inversion):

* ``loop``: N separate generators, one after the other (what N single-photo runs do);
* ``vmap``: one :class:`StackedGenerator` call for all N;
* ``stacked, 1 per call``: the same stacked weights, one photo per call (``photos_per_call=1``,
  the CPU default);
* the training-mode modulated convolution (the generator's dominant op) with per-photo kernels,
  once through ``vmap`` and once written by hand as one grouped convolution, at the sizes of
  the chosen generator's largest backbone layer.

Each photo renders ``--cameras`` cameras from its tri-planes (the input view and its auxiliary
views). Prints one Markdown row per case: median seconds of --repeats runs after one warm-up,
and seconds per photo. Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import vmap

from hfgi3d.cameras import orbit_c25
from hfgi3d.generator import TriPlaneGenerator, ffhq512_config, tiny_config
from hfgi3d.generator.layers import modulated_conv2d
from hfgi3d.generator.stacked import StackedGenerator

CONFIGS = {"tiny": tiny_config, "tiny256": lambda: tiny_config(plane_resolution=256), "ffhq512": ffhq512_config}


def median_time(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    def timed() -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up (allocations, cuDNN autotuning)
    return statistics.median(timed() for _ in range(repeats))


def generator_cases(
    config_name: str, photos: int, cameras: int, device: torch.device, repeats: int
) -> dict[str, float]:
    torch.manual_seed(0)
    generator = TriPlaneGenerator(CONFIGS[config_name]()).to(device).train()
    ws = torch.randn(photos, generator.num_ws, generator.config.w_dim, device=device)
    yaw = torch.linspace(-0.3, 0.3, photos * cameras)
    c = orbit_c25(yaw, torch.zeros_like(yaw)).reshape(photos, cameras, 25).to(device)

    copies = [TriPlaneGenerator(generator.config).to(device).train() for _ in range(photos)]
    for copy in copies:
        copy.load_state_dict(generator.state_dict())

    def loop() -> None:
        for index, copy in enumerate(copies):
            planes = copy.planes(ws[index : index + 1])
            out = copy.render(
                planes.expand(cameras, -1, -1, -1, -1), ws[index : index + 1].expand(cameras, -1, -1), c[index]
            )
            out["image"].square().mean().backward()

    def stacked_step(photos_per_call: int) -> Callable[[], None]:
        stacked = StackedGenerator(generator, photos, photos_per_call).to(device)

        def step() -> None:
            out = stacked.synthesis_cameras(ws, c, batch_size=cameras)  # the inversion's call
            out["image"].square().mean(dim=(1, 2, 3, 4)).sum().backward()

        return step

    return {
        "loop": median_time(loop, device, repeats),
        "vmap": median_time(stacked_step(photos), device, repeats),
        "stacked, 1 per call": median_time(stacked_step(1), device, repeats),
    }


def conv_cases(config_name: str, photos: int, cameras: int, device: torch.device, repeats: int) -> dict[str, float]:
    """The training-mode modulated 3×3 convolution of the backbone's last block, per-photo kernels."""
    config = CONFIGS[config_name]()
    size = config.plane_resolution
    channels = min(config.channel_max, config.channel_base // size)
    torch.manual_seed(0)
    x = torch.randn(photos, cameras, channels, size, size, device=device)
    weight = torch.randn(photos, channels, channels, 3, 3, device=device, requires_grad=True)
    styles = torch.randn(photos, cameras, channels, device=device)

    def by_vmap() -> None:
        out = vmap(lambda x, w, s: modulated_conv2d(x, w, s, padding=1, fused=False))(x, weight, styles)
        out.square().mean().backward()

    def by_groups() -> None:
        # Photo-major channels: the input is K×(N·I)×H×W, the kernels (N·O)×I×3×3 in N groups.
        scaled = (x * styles[..., None, None]).transpose(0, 1).reshape(cameras, photos * channels, size, size)
        out = torch.nn.functional.conv2d(scaled, weight.reshape(-1, channels, 3, 3), padding=1, groups=photos)
        w = weight.unsqueeze(1) * styles.reshape(photos, cameras, 1, channels, 1, 1)  # N×K×O×I×3×3
        dcoefs = (w.square().sum(dim=[3, 4, 5]) + 1e-8).rsqrt()  # N×K×O
        out = out.reshape(cameras, photos, channels, size, size).transpose(0, 1) * dcoefs[..., None, None]
        out.square().mean().backward()

    return {"conv vmap": median_time(by_vmap, device, repeats), "conv groups": median_time(by_groups, device, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny256"], choices=sorted(CONFIGS))
    parser.add_argument("--photos", nargs="+", type=int, default=[1, 4, 8], help="N, photos inverted together")
    parser.add_argument("--cameras", type=int, default=2, help="cameras per photo and step (input + auxiliary)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, forward+backward, {args.cameras} cameras per photo")
    print("| config | photos | case | median s | s per photo |\n|---|---|---|---|---|")
    for config_name in args.config:
        for photos in args.photos:
            cases = generator_cases(config_name, photos, args.cameras, device, args.repeats)
            cases.update(conv_cases(config_name, photos, args.cameras, device, args.repeats))
            for case, seconds in cases.items():
                print(f"| {config_name} | {photos} | {case} | {seconds:.4f} | {seconds / photos:.4f} |", flush=True)


if __name__ == "__main__":
    main()
