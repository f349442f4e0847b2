"""Which code runs: the git commit of the cnnlab package as this process imported it. No torch here:
a Ray node's storage check asks it too (cnnlab/seeds/ray_backend.py)."""

import subprocess
from functools import cache
from pathlib import Path


@cache
def git_commit() -> str | None:
    """The commit of the code that runs (with "-dirty" for uncommitted changes to tracked files), or
    None outside a git checkout. Once per process: a worker keeps the code it imported."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit
