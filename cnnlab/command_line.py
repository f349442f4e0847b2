"""What was written on the command line and in the --config files, where the parsed config alone cannot
tell: which settings were given explicitly, and whether a batch limit was an integer (a number of
batches) or a fraction."""

import os
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


ENV_PREFIX = "PL"  # LightningCLI's: PL_FIT__TRAINER__MAX_EPOCHS=3 sets trainer.max_epochs for fit


def environment_variables(subcommand: str | None, environ=os.environ) -> dict[str, tuple[str, str]]:
    """The PL_<SUBCOMMAND>__* variables set (LightningCLI's `default_env`): name -> (short key, raw text)."""
    if subcommand is None:
        return {}
    prefix = f"{ENV_PREFIX}_{subcommand.upper()}__"
    return {
        name: (short(name[len(prefix) :].lower().replace("__", ".")), value)
        for name, value in sorted(environ.items())
        if name.startswith(prefix) and name != f"{prefix}CONFIG"
    }


def environment_settings(subcommand: str | None, args: list[str], config: Namespace, environ=os.environ):
    """The PL_<SUBCOMMAND>__* variables that took effect (name -> (short key, raw text)), and the names of
    those that did not. jsonargparse reads them after the defaults and before the command line, so a
    --config file or an argument that sets the same key wins; and it reads only the names `--help` lists
    (a model's or DataModule's own settings are not among them: PL_FIT__MODEL takes the whole model).
    A variable counts only where the parsed `config` holds its value."""
    given = environment_variables(subcommand, environ)
    if not given:
        return {}, []
    shadowed = settings_in_files(config_files(args)) | set(explicit_settings(args))
    effective, ignored = {}, []
    for name, (key, value) in given.items():
        overridden = any(key == o or o.startswith(f"{key}.") or key.startswith(f"{o}.") for o in shadowed)
        if overridden or not _holds(config, key, value):
            ignored.append(name)
        else:
            effective[name] = (key, value)
    return effective, ignored


def _holds(config: Namespace, key: str, raw: str) -> bool:
    """Whether the parsed setting `key` (short) holds the value `raw` of its environment variable."""
    if key.split(".")[0] in ("model", "data") and "." not in key:
        return True  # the whole model or DataModule: not compared
    parts = key.split(".")
    for full in (key, ".".join([parts[0], "init_args", *parts[1:]])):
        if full in config:
            value = config.get(full)
            break
    else:
        return False  # not a setting of this command: jsonargparse read nothing from it
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        parsed = raw
    return value == parsed or str(value) == raw


def _config_positions(args: list[str]):
    """(index, path) of each --config file of a command line, in order (`--config x` and `--config=x`)."""
    for i, token in enumerate(args):
        if token == "--config" and i + 1 < len(args):
            yield i + 1, args[i + 1]
        elif token.startswith("--config="):
            yield i, token.partition("=")[2]


def config_files(args: list[str]) -> list[str]:
    """The --config files of a command line, in order."""
    return [path for _, path in _config_positions(args)]


def settings_in_files(files: list) -> set[str]:
    """The settings (short keys of their leaves) that the --config files set."""
    found: set[str] = set()

    def walk(node, path: list[str]) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, [*path, str(key)])
        elif path:
            found.add(short(".".join(path)))

    for file in files:
        try:
            walk(yaml.safe_load(Path(str(file)).read_text()) or {}, [])
        except (OSError, yaml.YAMLError):
            continue
    return found


def packaged_configs() -> Path:
    """Where the experiment configs of the installed package are: the checkout's configs/ for an
    editable install, the copy installed with the package (cnnlab/configs) otherwise."""
    import cnnlab

    package = Path(cnnlab.__file__).parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def locate_config(path: str) -> str:
    """A --config path as given when it exists; `configs/<file>` from the installed package when it
    does not (cnnlab used outside its checkout); else as given, for the parser to refuse."""
    given = Path(path)
    if given.exists() or given.is_absolute() or not given.parts or given.parts[0] != "configs":
        return path
    installed = packaged_configs().joinpath(*given.parts[1:])
    return str(installed) if installed.is_file() else path


def located_configs(args: list[str]) -> list[str]:
    """The command line with each --config file located by `locate_config`."""
    located = list(args)
    for i, path in _config_positions(args):
        found = locate_config(path)
        located[i] = found if located[i] == path else f"--config={found}"
    return located


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


def integer_limits(config: Namespace, explicit: dict[str, str], environment: dict[str, str] | None = None) -> list[str]:
    """The batch limits written as integers (`limit_test_batches: 1` runs one batch, as in Lightning's
    Python API; `1.0` is all of them), given back their integer type in `config`; returned so that the
    instantiated trainer settings get it too (jsonargparse coerces them to float again there)."""
    files = _from_files(list(config.get("config") or []))
    found = []
    for name in INTEGER_OR_FRACTION:
        value = config.trainer.get(name)
        if not isinstance(value, float) or not value.is_integer():
            continue
        key = f"trainer.{name}"  # the command line wins over the --config files, which win over PL_* variables
        raw = explicit[key] if key in explicit else files.get(name, (environment or {}).get(key))
        if (isinstance(raw, int) and not isinstance(raw, bool)) or (isinstance(raw, str) and INTEGER.fullmatch(raw)):
            config.trainer[name] = int(value)
            found.append(name)
    return found


# -- jsonargparse's refusals as one paragraph ------------------------------------------------------

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_EXPECTED = re.compile(r"Expected a (?:<class '([^']+)'>|typing\.Literal\[([^\]]*)\])")
_GOT = re.compile(r"(?:Got value|Given value): ([^\n]*)")


def _accepted(message: str) -> str | None:
    """What the innermost refused key takes: its types, or the values of a Literal."""
    types, choices = [], []
    for name, literal in _EXPECTED.findall(message):
        if literal:
            choices += [c.strip() for c in literal.split(",")]
        elif name != "NoneType":
            types.append(name)
    if choices:
        return "one of " + ", ".join(dict.fromkeys(choices))
    return "a value of type " + " or ".join(dict.fromkeys(types)) if types else None


def parse_error_paragraph(message: str, argv: list[str], environ=os.environ) -> str:
    """jsonargparse's refusal of a setting (a nested report of 10-80 lines with every Union member it
    tried) as one paragraph: the key as the user spells it, what it got, what it accepts, and where to
    look. Anything this does not recognise keeps jsonargparse's first line."""
    subcommand = next((a for a in argv[:1] if a in ("fit", "validate", "test", "predict")), None)
    if subcommand is None:
        return f"{' '.join(message.split())}. `python train.py --help` lists the subcommands."
    help_line = f"`python train.py {subcommand} --help` lists every setting and what it accepts"
    missing = re.search(r"File does not exist: '([^']+)'", message)
    if missing:
        return f"The --config file {missing.group(1)} does not exist. Give the path of a YAML config (configs/)."
    if message.startswith("Unexpected config"):
        return (
            "A --config file holds no settings (it is empty, or not a YAML mapping of settings). Give a config "
            f"such as configs/mnist_classifier.yaml. {help_line}."
        )
    key = ".".join(short(k) for k in _KEY.findall(message))
    found = _CLASS.search(message)
    owner = found.group(1) if found else None
    if owner:
        section = key.split(".")[0]
        help_line = f"`python train.py {subcommand} --{section}.help {owner}` lists the settings of {owner}"
    unknown = _UNKNOWN.search(message)
    if unknown:
        name = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        return (
            f"{name} is not a setting of {owner or 'this command'} (a typo, or a setting of another class?). "
            f"{help_line}."
        )
    accepted = _accepted(message)
    variable = next((n for n, (k, _) in environment_variables(subcommand, environ).items() if k == key), None)
    if key and accepted and variable:  # jsonargparse reads the variables first: theirs is the value refused
        value = environ[variable]
        return f"{key} got {value!r} from the environment variable {variable}, but it takes {accepted}. {help_line}."
    if key and accepted:
        value = explicit_settings(argv).get(key)  # as typed; from a --config file, as jsonargparse read it
        if value is None:
            plain = [v for v in _GOT.findall(message) if "NestedArg(" not in v and "Namespace(" not in v]
            value = plain[0].strip() if plain else None
        got = f" got {value!r}, but it" if value is not None else ""
        return f"{key}{got} takes {accepted}. {help_line}."
    first = " ".join(message.strip().splitlines()[0].split()) if message.strip() else "the arguments were refused"
    return f"{first}. {help_line}."
