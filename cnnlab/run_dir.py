"""Where a run's files go: `<root>/<experiment>/<YYYYmmdd-HHMMSS>-seed<seed>/` for a training run
(config.yaml, checkpoints/, logger files, figures/, summary.json), and
`<run>/evaluations/<YYYYmmdd-HHMMSS>-<subcommand>/` for each validate/test/predict of one of its
checkpoints. Names are chosen before anything is built and the folders made only once the command
has passed every check, so a refused command leaves nothing behind.
"""

import os
from datetime import datetime
from pathlib import Path

from cnnlab.environment import OUTPUT_DIR_ENV, RUN_DIR_ENV
from cnnlab.errors import CnnlabError

RUNS_ROOT = "runs"  # the default of trainer.default_root_dir and of cnnlab-seeds --root
EVALUATIONS = "evaluations"
CHECKPOINTS = "checkpoints"


def launched_as_rank_zero() -> bool:
    """Best knowledge before the strategy starts: not a DDP child, not another node's process."""
    for var in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


def inherited_dirs() -> tuple[Path, Path] | None:
    """(run directory, output directory) that rank zero chose, in a process it started."""
    if os.environ.get(RUN_DIR_ENV) and os.environ.get(OUTPUT_DIR_ENV) and not launched_as_rank_zero():
        return Path(os.environ[RUN_DIR_ENV]), Path(os.environ[OUTPUT_DIR_ENV])
    return None


def hand_down(run_dir: Path, output_dir: Path) -> None:
    os.environ[RUN_DIR_ENV], os.environ[OUTPUT_DIR_ENV] = str(run_dir), str(output_dir)


def forget_handed_down() -> None:
    """A process that runs several commands in turn (a seed worker, a test) starts each afresh."""
    os.environ.pop(RUN_DIR_ENV, None)
    os.environ.pop(OUTPUT_DIR_ENV, None)


def unused_name(parent: Path, stem: str) -> Path:
    """`parent/stem`, or `stem-2`, `stem-3`... where that is taken."""
    for attempt in range(1, 1000):
        path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        if not path.exists():
            return path
    raise CnnlabError(f"Could not find a free directory name under {parent}: 999 runs named {stem} exist.")


def new_run_dir(parent: Path, seed: int) -> Path:
    """The name of a new training run's directory (not created yet)."""
    return unused_name(parent, f"{datetime.now():%Y%m%d-%H%M%S}-seed{seed}")


def new_evaluation_dir(run_dir: Path, subcommand: str) -> Path:
    """The name of a new evaluation record under a run (not created yet)."""
    return unused_name(run_dir / EVALUATIONS, f"{datetime.now():%Y%m%d-%H%M%S}-{subcommand}")


def new_standalone_dir(parent: Path, seed: int, subcommand: str) -> Path:
    """The name of an evaluation record that belongs to no training run (fresh weights, or a
    checkpoint from elsewhere), beside the experiment's runs."""
    return unused_name(parent, f"{datetime.now():%Y%m%d-%H%M%S}-seed{seed}-{subcommand}")


def create(path: Path) -> None:
    """Make a directory chosen by `unused_name`; another process taking it meanwhile is an error
    rather than two runs in one directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise CnnlabError(
            f"Another run took the directory {path} while this one started; run the command again."
        ) from None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The training run a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), if it is one of ours."""
    path = checkpoint.resolve()
    run = path.parent.parent
    return run if path.parent.name == CHECKPOINTS and (run / "config.yaml").is_file() else None


def latest_run_with_checkpoint(experiment_dir: Path) -> Path | None:
    """The training run of an experiment whose last.ckpt was written last."""
    found = sorted(experiment_dir.glob(f"*/{CHECKPOINTS}/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None
