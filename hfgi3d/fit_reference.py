"""``fit``'s option names and help text, stored so that ``fit --help`` and the check of option names
need not import Lightning (which alone takes about 5 s on a 2-core CPU).

``hfgi3d/assets/fit_reference.json`` is made from the parser ``fit`` itself builds
(:func:`hfgi3d.fit.fit_parser`) by ``python -m hfgi3d.fit_reference``; a test fails when the two
differ, so the file is rewritten with every change of an option or its help. The file is used only
when the installed Lightning and jsonargparse are the versions it was made with (their Trainer
options and help are in it); with other versions ``fit --help`` builds the parser, and LightningCLI
refuses an unknown option itself (more slowly, without a suggestion).

Usage:
    python -m hfgi3d.fit_reference          # rewrite the file
    python -m hfgi3d.fit_reference --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hfgi3d.errors import InputError
from hfgi3d.stages import FORMER_KEYS

REFERENCE_FILE = Path(__file__).parent / "assets" / "fit_reference.json"
HELP_COLUMNS = 100
"""Width of the stored help text."""
VERSIONED = ("lightning", "jsonargparse")
"""Packages whose options and help text the file holds."""
DESCRIBE = ("-h", "--help", "-c", "--config", "--print_config")
"""Options of every jsonargparse parser."""


def installed_versions() -> dict[str, str]:
    return {name: version(name) for name in VERSIONED}


def build() -> dict[str, Any]:
    """The reference as ``fit``'s parser gives it now: versions, option names, links, help text."""
    from hfgi3d.fit import fit_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        parser = fit_parser()
        help_text = parser.format_help()
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    options = sorted({name for action in parser._actions for name in action.option_strings if name.startswith("--")})
    links: dict[str, list[str]] = {}
    for action in parser._actions:  # a link's option string reads "source --> target" or "fn(a, b) --> target"
        for name in action.option_strings:
            if " --> " in name:
                sources, target = name.split(" --> ")
                links[target] = [part.strip() for part in sources.split("(", 1)[-1].rstrip(")").split(",")]
    return {"versions": installed_versions(), "options": options, "links": links, "help": help_text}


@cache
def stored() -> dict[str, Any] | None:
    """The stored reference, or ``None`` when it was made with other Lightning/jsonargparse versions."""
    if not REFERENCE_FILE.is_file():
        return None
    reference: dict[str, Any] = json.loads(REFERENCE_FILE.read_text())
    return reference if reference.get("versions") == installed_versions() else None


def stored_help() -> str | None:
    """``fit --help``'s text, when the stored reference applies to the installed versions."""
    reference = stored()
    return None if reference is None else str(reference["help"])


def check_option_names(args: Sequence[str]) -> None:
    """Refuse an option ``fit`` does not have, suggesting the closest one (nothing is checked when the
    stored reference does not apply).

    An option inside a class-valued one (``--trainer.callbacks.every_n_steps`` after
    ``--trainer.callbacks+=…``, ``--trainer.logger.init_args.project``) is left to LightningCLI.

    Raises:
        InputError: an unknown option, or a value that is computed from others (``trainer.max_steps``).
    """
    reference = stored()
    if reference is None:
        return
    options = set(reference["options"])
    links: dict[str, list[str]] = reference["links"]
    # Class-valued options (those with a `.help`) take their classes' arguments as inner keys:
    # --trainer.callbacks.every_n_steps, --trainer.logger.init_args.project, …
    open_ended = {option.removesuffix(".help") for option in options if option.endswith(".help")}
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg.split("=", 1)[0].rstrip("+")
        if name in options or name in DESCRIBE or any(name.startswith(f"{option}.") for option in open_ended):
            continue
        target = name[2:]
        group, _, key = target.partition(".")
        if group == "model" and key in FORMER_KEYS:
            raise InputError(f"{name} is now --model.{FORMER_KEYS[key]}")
        if target in links:
            sources = ", ".join(f"--{source}" for source in links[target])
            raise InputError(f"{name} cannot be given: fit sets it from {sources}")
        close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}? " if close else ""
        raise InputError(f"unknown option {name}: {hint}(python -m hfgi3d fit --help lists every option)")


def main(argv: Sequence[str]) -> int:
    reference = build()
    text = json.dumps(reference, indent=1, ensure_ascii=False) + "\n"
    if "--check" in argv:
        current = REFERENCE_FILE.read_text() if REFERENCE_FILE.is_file() else ""
        if current != text:
            print(f"{REFERENCE_FILE} is out of date: run python -m hfgi3d.fit_reference", file=sys.stderr)
            return 1
        return 0
    REFERENCE_FILE.write_text(text)
    print(f"wrote {REFERENCE_FILE} ({len(reference['options'])} options)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
