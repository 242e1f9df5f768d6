"""Time the generator: forward (and forward+backward) per configuration, batch and precision.

    python benchmarks/generator_speed.py --config tiny ffhq512 --batch 1 4 --precision fp32 bf16 --backward

Prints one Markdown table row per case (median of --repeats runs after one warm-up).
Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hfgi3d.cameras import orbit_c25
from hfgi3d.generator import TriPlaneGenerator, ffhq512_config, tiny_config

CONFIGS = {"tiny": tiny_config, "tiny256": lambda: tiny_config(plane_resolution=256), "ffhq512": ffhq512_config}


def time_case(generator: TriPlaneGenerator, batch: int, precision: str, backward: bool, repeats: int) -> float:
    device = next(generator.parameters()).device
    z = torch.randn(batch, generator.config.z_dim, device=device)
    c = orbit_c25(torch.linspace(-0.3, 0.3, batch), torch.zeros(batch)).to(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"), torch.set_grad_enabled(backward):
            out = generator(z, c)
            if backward:
                (out["image"].float().square().mean() + out["image_depth"].float().mean()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device_name}, torch {torch.__version__}")
    print("| config | batch | precision | pass | median s |\n|---|---|---|---|---|")
    for name in args.config:
        torch.manual_seed(0)
        generator = TriPlaneGenerator(CONFIGS[name]()).to(args.device)
        for batch in args.batch:
            for precision in args.precision:
                for backward in [False, True] if args.backward else [False]:
                    generator.train(backward)
                    seconds = time_case(generator, batch, precision, backward, args.repeats)
                    label = "fwd+bwd" if backward else "fwd"
                    print(f"| {name} | {batch} | {precision} | {label} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
