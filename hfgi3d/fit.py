"""``python -m hfgi3d fit``: one inversion, configured with LightningCLI (jsonargparse).

    python -m hfgi3d fit --config configs/hfgi3d.yaml --data.image face.png --data.camera face.json

Every hyperparameter is a config entry (``--print_config`` shows them all). Besides the
model (:class:`~hfgi3d.inversion.InversionModule`), data
(:class:`~hfgi3d.data.datamodule.PseudoViewDataModule`) and trainer groups there is an
``outputs`` group (:class:`~hfgi3d.outputs.InversionOutputs`) and two shortcuts:
``--output_dir`` (default ``outputs/<image name>``; checkpoints and logs go inside) and
``--overwrite``. ``trainer.max_steps`` is always ``estimate_steps + pseudo_multiview_steps``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import SAMPLE_IMAGE
from hfgi3d.inversion import InversionModule
from hfgi3d.outputs import InversionOutputs


def _total_steps(estimate_steps: int, pseudo_multiview_steps: int) -> int:
    return estimate_steps + pseudo_multiview_steps


class InversionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(InversionOutputs, "outputs")
        parser.add_argument("--output_dir", type=str | None, default=None, help="results (default outputs/<image>)")
        parser.add_argument("--overwrite", type=bool, default=False, help="replace existing results")
        parser.link_arguments(
            ("model.estimate_steps", "model.pseudo_multiview_steps"), "trainer.max_steps", compute_fn=_total_steps
        )
        parser.link_arguments("overwrite", "outputs.overwrite")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        output_dir = config.get("output_dir") or config["outputs"].get("output_dir")
        if not output_dir:
            image = config["data"].get("image") or str(SAMPLE_IMAGE)
            output_dir = str(Path("outputs") / Path(image).stem)
        config["outputs"]["output_dir"] = output_dir
        if config["trainer"].get("default_root_dir") in (None, "."):
            config["trainer"]["default_root_dir"] = output_dir


def main(args: Sequence[str]) -> int:
    """Run the LightningCLI with ``args`` (starting with the subcommand, e.g. ``fit``)."""
    # LightningCLI reads sys.argv; giving it both argv and `args` only earns a warning.
    with mock.patch.object(sys, "argv", ["python -m hfgi3d", *args]):
        InversionCLI(
            InversionModule,
            PseudoViewDataModule,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
    return 0
