"""How far a batch is from single-photo fits, next to how far rounding alone moves a single fit.

    python benchmarks/batch_rounding.py --out benchmarks/results/batch_rounding_cpu_tiny.json

A batch of three photos with every photo in one ``vmap`` call (``model.photos_per_call 3``, the
GPU default) rounds differently from one photo at a time, and Adam magnifies rounding (it moves
each weight by about its learning rate whatever the size of the gradient), so its fits drift
away from the single-photo fits over the steps. Is that drift more than rounding makes anyway?
The same single-photo fit run on 2 CPU threads instead of 1 differs from itself only in how its
sums are split, i.e. in rounding. For each photo this prints both distances: the largest
relative difference of the per-step losses, and the tuning gap ‖Δ_a − Δ_b‖ / ‖Δ_b‖ of the tuned
weights (Δ: how far stage 2 moved them from the pretrained ones). The set-up is the one of
``tests/test_batch.py`` (the tiny generator, the paper's preset shrunk to 3 + 2 + 3 steps, photos
the tiny generator renders at three latents and cameras).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    from hfgi3d.data.datamodule import PseudoViewDataModule
    from hfgi3d.generator import open_generator
    from hfgi3d.inversion import InversionModule
    from tests.presets import FAST_MODEL, FAST_VIEWS, cpu_trainer, data_args, write_tiny_photos

    names = ("a", "b", "c")
    folder = write_tiny_photos(Path(tempfile.mkdtemp()), names)

    def fit(model: dict[str, Any], threads: int, **data: Any) -> tuple[InversionModule, torch.Tensor]:
        torch.set_num_threads(threads)
        module = InversionModule(**model)
        losses: list[torch.Tensor] = []
        optimize = module._optimize

        def spy(index: int, loss: torch.Tensor, *rest: Any, **kwargs: Any) -> None:
            losses.append(loss.detach().clone())
            optimize(index, loss, *rest, **kwargs)

        module._optimize = spy  # type: ignore[method-assign]
        datamodule = PseudoViewDataModule(**data_args(num_views=2, pseudo_views=FAST_VIEWS, **data))
        torch.manual_seed(0)
        cpu_trainer(folder, module.total_steps, []).fit(module, datamodule=datamodule)
        return module, torch.stack(losses)

    pretrained = open_generator("tiny").state_dict()

    def gap(a: InversionModule, i: int, b: InversionModule) -> float:
        tuned, alone = a.photo_generator(i).state_dict(), b.photo_generator(0).state_dict()
        apart = sum(float((tuned[k] - alone[k]).square().sum()) for k in alone)
        moved = sum(float((alone[k] - pretrained[k]).square().sum()) for k in alone)
        return (apart / moved) ** 0.5

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).abs() / b.abs()).max())

    batch, batch_losses = fit({**FAST_MODEL, "photos": 3, "photos_per_call": 3}, 1, images=str(folder), batch_size=3)
    rows = []
    for index, name in enumerate(names):
        photo = {"image": str(folder / f"{name}.png"), "camera": str(folder / f"{name}.json")}
        one, one_losses = fit(FAST_MODEL, 1, **photo)
        two, two_losses = fit(FAST_MODEL, 2, **photo)
        batch_apart = {
            "loss_rel": relative(batch_losses[:, index], one_losses[:, 0]),
            "tuning_gap": gap(batch, index, one),
        }
        threads_apart = {"loss_rel": relative(two_losses[:, 0], one_losses[:, 0]), "tuning_gap": gap(two, 0, one)}
        rows.append({"photo": name, "vmap_batch_vs_single": batch_apart, "single_2_threads_vs_1": threads_apart})
    result = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
