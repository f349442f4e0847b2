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


def commands_in(markdown: str) -> list[str]:
    """Each command line in a page's bash blocks, continuations joined and comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            line = re.sub(r"^.*&& ", "", line)  # the install-and-run one-liners: the command at the end
            if line.startswith(TRAIN + SEEDS):
                found.append(line)
    return found


def command_lines() -> list[tuple[str, str]]:
    """(file, command) for each command line in the docs' bash blocks."""
    return [(path.name, line) for path in DOCS for line in commands_in(path.read_text())]


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


def test_commands_are_read_whole_from_bash_blocks_without_their_comments():
    page = (
        "```bash\n"
        "python train.py fit --config configs/mnist_classifier.yaml \\\n"
        "    --trainer.max_epochs 2   # two epochs\n"
        "pip install -e . && cnnlab-seeds run configs/mnist_classifier.yaml --seeds 0-2\n"
        "ls runs/\n"
        "```\n"
        "```python\n"
        "python train.py fit --a-python-block-is-not-a-shell\n"
        "```\n"
    )
    assert [shlex.split(line) for line in commands_in(page)] == [
        ["python", "train.py", "fit", "--config", "configs/mnist_classifier.yaml", "--trainer.max_epochs", "2"],
        ["cnnlab-seeds", "run", "configs/mnist_classifier.yaml", "--seeds", "0-2"],
    ]


def test_a_doc_command_the_cli_would_refuse_fails_the_check(monkeypatch, capsys):
    # what the parametrised test below catches: an option the CLI does not know (a typo, a renamed argument)
    config = "configs/mnist_anomaly_ae.yaml"
    parse_train(["fit", "--config", config, "--data.normal_classes", "[3]"], monkeypatch, capsys)
    with pytest.raises(AssertionError):
        parse_train(["fit", "--config", config, "--data.normal_clases", "[3]"], monkeypatch, capsys)


def parse_train(args: list[str], monkeypatch, capsys) -> None:
    from cnnlab.cli import CnnlabCLI
    from cnnlab.errors import CnnlabError

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    shows_help = any(a == "--help" or a.endswith(".help") for a in args)
    try:
        CnnlabCLI(args=args if shows_help else [*args, "--print_config"])
    except SystemExit as done:
        assert done.code == 0, capsys.readouterr().err[-3000:]
    except CnnlabError as refused:  # the CLI's one paragraph for a setting it does not take
        raise AssertionError(str(refused)) from None
    else:
        raise AssertionError(f"{args} neither printed its config nor was refused")


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
            jobs=known.jobs,
            backend=known.backend,
            address=known.address,
            cpus_per_seed=known.cpus_per_seed,
            gpus_per_seed=known.gpus_per_seed,
        )
        parse_train(["fit", *sweep.args(sweep.seeds[0])], monkeypatch, capsys)
    else:
        assert not overrides, f"{doc}: {line} has arguments cnnlab-seeds {known.command} does not take"
