"""Where a run's files go: `<root>/<experiment>/<YYYYmmdd-HHMMSS>-seed<seed>/` for a training run
(config.yaml, checkpoints/, logger files, figures/, summary.json), and
`<run>/evaluations/<YYYYmmdd-HHMMSS>-<subcommand>/` for each validate/test/predict of one of its
checkpoints. A directory is claimed (created exclusively) before anything is built, so that two
commands started together never share one, and released again if the command is refused before it
wrote anything, so a refused command leaves nothing behind.
"""

import errno
import os
from datetime import datetime
from pathlib import Path

from cnnlab.environment import OUTPUT_DIR_ENV, RUN_DIR_ENV
from cnnlab.errors import CnnlabError

try:
    import fcntl
except ImportError:  # Windows: runs are not held (two resumes of one run are not told apart there)
    fcntl = None

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


def claim(parent: Path, stem: str, create: bool = True) -> Path:
    """Create and return `parent/stem`, or `stem-2`, `stem-3`... where that is taken. The directory is
    created exclusively (mkdir without exist_ok), so two processes that start at the same instant get
    two directories: the loser of a race takes the next name (docs/design.md, "Many processes").
    `create=False`: only the name, for a process that writes nothing there."""
    if not create:
        return parent / stem
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as err:
        raise CnnlabError(
            f"Cannot make a directory for this command's record under {parent} ({err.strerror}). Every run and "
            f"evaluation writes a record of its own there. Make {parent} writable (or free space), or, for an "
            "evaluation of a run you cannot write to, copy its checkpoint elsewhere and evaluate the copy: its "
            "record then goes under --trainer.default_root_dir."
        ) from None
    raise CnnlabError(f"Could not claim a directory under {parent}: 999 directories named {stem}* exist.")


def claim_run_dir(parent: Path, seed: int, create: bool = True) -> Path:
    """A new training run's directory."""
    return claim(parent, f"{datetime.now():%Y%m%d-%H%M%S}-seed{seed}", create)


def claim_evaluation_dir(run_dir: Path, subcommand: str, create: bool = True) -> Path:
    """A new evaluation record's directory under a run."""
    return claim(run_dir / EVALUATIONS, f"{datetime.now():%Y%m%d-%H%M%S}-{subcommand}", create)


def claim_standalone_dir(parent: Path, seed: int, subcommand: str, create: bool = True) -> Path:
    """An evaluation record that belongs to no training run (fresh weights, or a checkpoint from
    elsewhere), beside the experiment's runs."""
    return claim(parent, f"{datetime.now():%Y%m%d-%H%M%S}-seed{seed}-{subcommand}", create)


def release(path: Path, stop: Path) -> bool:
    """Remove a claimed directory again if nothing was written into it, and the folders above it that
    are left empty, up to `stop` (a command refused after it claimed its directory leaves nothing
    behind). Returns whether it is gone."""
    if path.is_dir():
        for folder, _, files in os.walk(path, topdown=False):
            if files:
                return False
            try:
                os.rmdir(folder)
            except OSError:
                return False
    stop = stop.resolve()
    parent = path.resolve().parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()  # only an empty folder goes
        except OSError:
            break
        parent = parent.parent
    return True


def hold_run(run_dir: Path) -> int | None:
    """Hold a training run for this process while it trains: an exclusive flock on its checkpoints/
    folder, taken without waiting and let go when the process closes it (`let_go`) or ends, however
    it ends (kill -9 included). A second fit of the same run (two resumes at once, a resume of a run
    that is still training) is refused instead of writing into the live run. Returns the handle."""
    if fcntl is None:
        return None
    folder = run_dir / CHECKPOINTS
    try:
        if not os.access(run_dir, os.W_OK):  # a read-only mount says no here, even to root
            raise PermissionError(errno.EACCES, "not writable", str(run_dir))
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY)
    except OSError as err:
        raise CnnlabError(
            f"Cannot write the run {run_dir} ({err.strerror}): a resumed run goes on writing its checkpoints and "
            "records there. Make it writable (or free space), or start a new run from its checkpoint: copy it "
            "elsewhere and give the copy to --ckpt_path."
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise CnnlabError(
            f"The run {run_dir} is being trained by another process right now (a fit or a resume of it has not "
            "ended). Wait for it to end, or stop it, then resume with --ckpt_path last; two processes training "
            "one run would write over each other's checkpoints and records."
        ) from None
    return handle


def let_go(handle: int | None) -> None:
    if handle is not None:
        os.close(handle)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The training run a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), if it is one of ours."""
    path = checkpoint.resolve()
    run = path.parent.parent
    return run if path.parent.name == CHECKPOINTS and (run / "config.yaml").is_file() else None


def run_dirs(experiment_dir: Path) -> list[Path]:
    """The directories of an experiment that hold a record or checkpoints, in name order. Which of them
    `--ckpt_path best|last` may pick is decided from their records (cnnlab/checkpoints.py), not from
    file times, which a copy or a sync changes."""
    if not experiment_dir.is_dir():
        return []
    return sorted(
        path for path in experiment_dir.iterdir() if (path / "summary.json").is_file() or (path / CHECKPOINTS).is_dir()
    )
