"""Paths as a user copies them into a shell (relative to the working directory where they lie under
it), and W&B's offline folders of a run: what the commands print (`next`, `wandb sync`). No torch or
Lightning here: the seeds launcher uses it too."""

import re
import shlex
from pathlib import Path


def shown_path(path: str | Path, cwd: Path | None = None) -> str:
    """`path` relative to the working directory where it lies under it, else whole (not quoted)."""
    path, base = Path(path).resolve(), (cwd or Path.cwd()).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def shell_path(path: str | Path, cwd: Path | None = None) -> str:
    """`shown_path`, quoted for a shell."""
    return shlex.quote(shown_path(path, cwd))


def train_command(cwd: Path | None = None) -> list[str]:
    """How to run train.py from the working directory: `python train.py` in the checkout, else the
    installed module (`python -m train`: py-modules in pyproject.toml), which works from anywhere."""
    here = Path(cwd or Path.cwd(), "train.py")
    return ["python", "train.py"] if here.is_file() else ["python", "-m", "train"]


OFFLINE_RUN = re.compile(r"offline-run-(\d{8}_\d{6})-(.+?)(?:-(\d+))?")  # wandb's offline folder: time, run id, n


def offline_dirs(run_ids: set[str] | str, roots: list[Path]) -> list[Path]:
    """The `offline-run-<time>-<id>[-<n>]` directories of the W&B runs `run_ids` in the `wandb/`
    folders given, oldest first (the order `wandb sync` merges a resumed run in)."""
    ids = {run_ids} if isinstance(run_ids, str) else set(run_ids)
    found = {}
    for root in roots:
        for path in Path(root).glob("offline-run-*"):
            match = OFFLINE_RUN.fullmatch(path.name)
            if match and match[2] in ids and path.is_dir():
                found[path.resolve()] = (match[1], int(match[3] or 0))
    return sorted(found, key=found.get)
