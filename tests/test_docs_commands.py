"""Every ``python -m hfgi3d`` command that README.md, docs/reference.md and benchmarks/README.md show in
their shell blocks is spelled as the command line takes it. Each is parsed as written, without being
run (most need the EG3D weights or a user's photos): ``fit`` through LightningCLI (``--print_config``
checks every option and value and needs no photo), the other commands through their own parsers.
Synopsis lines (with ``[optional]`` parts or ``a|b`` choices) are not commands and are left out.
``make demo`` and ``make test``, the README's set-up, are what CI and the demo run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hfgi3d import fit_reference
from hfgi3d.cli import main, parse_command
from hfgi3d.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/reference.md", "benchmarks/README.md")
PREFIX = ["python", "-m", "hfgi3d"]


def shell_commands(text: str) -> list[str]:
    """The commands of a Markdown text's ``bash``/``sh`` blocks: continuation lines joined, comments and
    leading ``VAR=value`` assignments dropped."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words.pop(0)
            if words:
                commands.append(shlex.join(words))
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every ``python -m hfgi3d`` command line, synopses left out."""
    found = []
    for document in DOCUMENTS:
        for command in shell_commands((REPO / document).read_text()):
            words = shlex.split(command)
            synopsis = any(word.startswith("[") or "|" in word or word == "..." for word in words)
            if words[:3] == PREFIX and not synopsis:
                found.append((document, command))
    return found


COMMANDS = documented_commands()


def test_the_documents_show_commands_of_every_kind() -> None:
    kinds = {shlex.split(command)[3] for _, command in COMMANDS}
    assert {"fit", "preprocess", "render", "convert-eg3d", "directions", "edit", "edit-texture"} <= kinds, kinds


def test_shell_blocks_are_read_as_a_shell_would() -> None:
    text = "```bash\nA=1 B=x python -m hfgi3d fit --config c.yaml \\\n    --data.image 'my photo.png'  # note\n```\n"
    assert shell_commands(text) == ["python -m hfgi3d fit --config c.yaml --data.image 'my photo.png'"]


@pytest.mark.parametrize(("document", "command"), COMMANDS, ids=[f"{d}: {c[17:60]}" for d, c in COMMANDS])
def test_a_documented_command_parses_as_written(
    document: str, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)  # the commands name configs/ relative to the repository
    argv = shlex.split(command)[len(PREFIX) :]
    if argv[0] == "fit":
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--print_config"])
        captured = capsys.readouterr()
        assert exited.value.code == 0, f"{document}: {command}\n{captured.err}"
        assert "model:" in captured.out
    else:
        args = parse_command(argv)  # raises InputError (one line) for an unknown option or a missing argument
        assert callable(args.run)


def test_a_misspelt_option_would_be_caught(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--config", str(REPO / "configs/hfgi3d.yaml"), "--model.generatr", "x", "--print_config"]) == 2
    misspelt = "did you mean --model.generator?" if fit_reference.stored() is not None else "unrecognized arguments"
    assert misspelt in capsys.readouterr().err
    with pytest.raises(InputError, match="unrecognized arguments: --seed 1"):
        parse_command(["render", "--generator", "tiny", "--seed", "1"])


def test_the_package_docstrings_map_names_what_is_there() -> None:
    """Each ``file.py: name, Class.method`` of the step map in ``hfgi3d/__init__.py`` exists."""
    import hfgi3d

    assert hfgi3d.__doc__ is not None
    rows = [line for line in hfgi3d.__doc__.split("::\n", 1)[1].split("\n\n", 1)[0].splitlines() if line.strip()]
    assert len(rows) > 10
    for row in rows:
        places = re.split(r"\s{2,}", row.strip(), maxsplit=1)[1]
        for place in re.sub(r"\s*\(.*?\)", "", places).split("; "):
            file, _, names = place.partition(": ")
            path = REPO / file if file.startswith("callbacks/") else REPO / "hfgi3d" / file
            text = path.read_text()
            for name in filter(None, names.split(", ")):
                for part in name.strip().split("."):
                    assert re.search(rf"(def|class) {part}\b|^{part}\b.*=", text, re.MULTILINE), (row, part)
