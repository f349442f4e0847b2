"""What was written on the command line and in the --config files, where the parsed config alone cannot
tell: which settings were given explicitly, and whether a batch limit was an integer (a number of
batches) or a fraction."""

import re
from pathlib import Path

import yaml
from jsonargparse import Namespace

# Lightning reads an int as a number of batches and a float as a fraction of them; jsonargparse turns
# `1` into `1.0` for these Union[int, float] arguments, which would run every batch instead of one.
INTEGER_OR_FRACTION = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "val_check_interval",
    "overfit_batches",
)
INTEGER = re.compile(r"[+-]?\d+")


def short(key: str) -> str:
    """A setting's name without jsonargparse's `init_args` levels: optimizer.init_args.lr -> optimizer.lr."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def explicit_settings(args: list[str]) -> dict[str, str]:
    """The settings given on the command line (not in --config files): short key -> raw text, for
    `--key=value` and `--key value`."""
    found: dict[str, str] = {}
    for i, token in enumerate(args):
        if not token.startswith("--") or token in ("--config", "--print_config"):
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
        found[short(key)] = value
    return found


def _from_files(files: list) -> dict:
    """trainer settings of the --config files, the later file winning."""
    merged: dict = {}
    for file in files:
        try:
            loaded = yaml.safe_load(Path(str(file)).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        trainer = loaded.get("trainer") if isinstance(loaded, dict) else None
        if isinstance(trainer, dict):
            merged |= trainer
    return merged


def integer_limits(config: Namespace, explicit: dict[str, str]) -> list[str]:
    """The batch limits written as integers (`limit_test_batches: 1` runs one batch, as in Lightning's
    Python API; `1.0` is all of them), given back their integer type in `config`; returned so that the
    instantiated trainer settings get it too (jsonargparse coerces them to float again there)."""
    files = _from_files(list(config.get("config") or []))
    found = []
    for name in INTEGER_OR_FRACTION:
        value = config.trainer.get(name)
        if not isinstance(value, float) or not value.is_integer():
            continue
        raw = explicit.get(f"trainer.{name}", files.get(name))
        if (isinstance(raw, int) and not isinstance(raw, bool)) or (isinstance(raw, str) and INTEGER.fullmatch(raw)):
            config.trainer[name] = int(value)
            found.append(name)
    return found
