"""The docs cannot drift from the CLI: every `train.py` and `cnnlab-seeds` command line shown in README.md
and docs/*.md parses (with --print_config, or as the --help it is), without training anything."""

import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAIN = ("python train.py ", ".venv/bin/python train.py ")
SEEDS = ("cnnlab-seeds ", "python -m cnnlab.seeds ")


def command_lines() -> list[tuple[str, str]]:
    """(file, command) for each command line in the docs' bash blocks, continuations joined and
    comments dropped."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                line = re.sub(r"^.*&& ", "", line)  # the install-and-run one-liners: the command at the end
                if line.startswith(TRAIN + SEEDS):
                    found.append((path.name, line))
    return found


COMMANDS = command_lines()


def yaml_snippets() -> dict[str, str]:
    """Config files the docs ask the reader to write: a yaml block whose first line names it."""
    snippets = {}
    for path in DOCS:
        for name, body in re.findall(r"```yaml\n# (\S+\.yaml)\n(.*?)```", path.read_text(), flags=re.S):
            snippets[name] = body
    return snippets


def with_written_snippets(args: list[str], tmp_path: Path) -> list[str]:
    """A --config file the reader writes from the docs is written, and named by its full path."""
    snippets = yaml_snippets()
    out = []
    for arg in args:
        if arg in snippets and not (ROOT / arg).exists():
            (tmp_path / arg).write_text(snippets[arg])
            arg = str(tmp_path / arg)
        out.append(arg)
    return out


def test_the_docs_show_commands_at_all():
    assert len(COMMANDS) > 30 and any("cnnlab-seeds run" in c for _, c in COMMANDS)


def parse_train(args: list[str], monkeypatch, capsys) -> None:
    from cnnlab.cli import CnnlabCLI

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    shows_help = any(a == "--help" or a.endswith(".help") for a in args)
    with pytest.raises(SystemExit) as info:
        CnnlabCLI(args=args if shows_help else [*args, "--print_config"])
    out = capsys.readouterr()
    assert info.value.code == 0, out.err[-3000:]


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_every_command_line_in_the_docs_parses(doc, line, monkeypatch, capsys, tmp_path):
    tokens = with_written_snippets(shlex.split(line), tmp_path)
    if line.startswith(TRAIN):
        parse_train(tokens[2:], monkeypatch, capsys)
        return
    from cnnlab.seeds.command import parser

    args = tokens[3:] if tokens[0] == "python" else tokens[1:]
    if args[0] == "one":
        parse_train(["fit", *[a for a in args[1:]]], monkeypatch, capsys)
        return
    if "--help" in args:
        return
    known, overrides = parser().parse_known_args(args)
    if known.command == "run":
        from cnnlab.seeds.sweep import Sweep, parse_seeds

        monkeypatch.chdir(ROOT)
        sweep = Sweep(
            name=known.name or Path(known.config[0]).stem,
            configs=known.config,
            seeds=parse_seeds(known.seeds),
            overrides=overrides,
        )
        parse_train(["fit", *sweep.args(sweep.seeds[0])], monkeypatch, capsys)
    else:
        assert not overrides, f"{doc}: {line} has arguments cnnlab-seeds {known.command} does not take"
