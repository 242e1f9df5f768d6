"""Paired differences bf16 − fp32 of the hfgi3d rows of two synthetic-benchmark folders (same images).

    python benchmarks/results/bf16-qualification/paired.py [FP32_DIR BF16_DIR]

Prints, per metric, both means and the mean, standard deviation, standard error and normal 95 %
interval of the per-image differences (the ``paired.txt`` beside this file).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("psnr", "novel_psnr", "lpips_alex", "novel_lpips", "ssim", "novel_ssim")


def rows(folder: Path) -> dict[str, dict[str, float]]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {row["image_id"]: row for row in map(json.loads, lines) if row["method"] == "hfgi3d"}


def main() -> None:
    fp32_dir, bf16_dir = (Path(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else (HERE / "fp32", HERE / "bf16")
    a, b = rows(fp32_dir), rows(bf16_dir)
    common = sorted(set(a) & set(b))
    print("images", len(common))
    for key in KEYS:
        d = [b[k][key] - a[k][key] for k in common]
        mean, sd = statistics.mean(d), statistics.stdev(d)
        se = sd / len(d) ** 0.5
        print(
            f"{key:12s} fp32 {statistics.mean(a[k][key] for k in common):.4f}  "
            f"bf16 {statistics.mean(b[k][key] for k in common):.4f}  paired Δ mean {mean:+.4f} sd {sd:.4f} "
            f"se {se:.4f} 95% CI [{mean - 1.96 * se:+.4f}, {mean + 1.96 * se:+.4f}]"
        )
    seconds = (statistics.mean(r[k]["job_seconds"] for k in common) for r in (a, b))
    print("seconds", *seconds)


if __name__ == "__main__":
    main()
