"""A launcher worker: imports torch and Lightning once, then runs seeds one after another, each as a
fresh `train.py fit` followed by `train.py test` of its best checkpoint, with the process state a
run can change (environment, threads, torch flags, warnings, the W&B run) reset between them.

Protocol (JSON lines): tasks on stdin, `ready` and `result` messages on the original stdout.
"""

import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

from cnnlab.environment import RUN_DIR_ENV, SPAWNED_AT_ENV
from cnnlab.errors import CnnlabError
from cnnlab.seeds.registry import is_complete, outcome_of

ERROR_LINES = 12  # lines of a seed's log kept as its error when the CLI exits without an exception


class Stop(BaseException):
    """The launcher asked this worker to stop (SIGTERM): leave the current seed unfinished."""

    interrupts_run = True  # the run's record says interrupted, not failed (cnnlab/records.py)


@dataclass
class ProcessState:
    """What one run may change in this process and a fresh `train.py` would not inherit: Lightning
    sets OMP_NUM_THREADS and torch's thread count under DDP, cli.py sets CNNLAB_RUN_DIR,
    seed_everything sets PL_GLOBAL_SEED, `trainer.deterministic`/`benchmark` flip global torch flags."""

    environ: dict
    cwd: str
    threads: int
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    matmul_precision: str
    default_dtype: object
    grad_enabled: bool

    @classmethod
    def capture(cls) -> "ProcessState":
        import torch

        return cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            threads=torch.get_num_threads(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            matmul_precision=torch.get_float32_matmul_precision(),
            default_dtype=torch.get_default_dtype(),
            grad_enabled=torch.is_grad_enabled(),
        )

    def restore(self) -> None:
        import torch

        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        os.chdir(self.cwd)
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)


def finish_wandb(exit_code: int) -> None:
    """End a W&B run a seed left open. cli.py finishes its run when a subcommand ends; a run that
    fails before its trainer starts is not covered there, and Lightning's WandbLogger reuses any
    active `wandb.run`, so the next seed would log into this seed's run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def warm_cli_class():
    """CnnlabCLI that builds its argument parsers once per process (cnnlab/lightning_internals.py's
    WarmParsers). Parsing, instantiation and the run itself are CnnlabCLI's own, as in `train.py`."""
    from cnnlab.cli import CnnlabCLI
    from cnnlab.lightning_internals import WarmParsers

    class WarmCLI(WarmParsers, CnnlabCLI):
        pass

    return WarmCLI


def run_cli(subcommand: str, args: list[str]) -> Path:
    """One `train.py <subcommand> ...` in this process; returns the directory of its record (the run
    for fit, the evaluation for test). Raises what the CLI raises; the W&B run it opened is finished
    either way."""
    from cnnlab.run_dir import forget_handed_down

    forget_handed_down()
    exit_code = 1
    try:
        cli = warm_cli_class()(args=[subcommand, *args])
        exit_code = 0
        return Path(cli.output_dir)
    finally:
        finish_wandb(exit_code)


def run_seed(
    seed: int,
    args: list[str],
    state: ProcessState | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Fit one seed, then test its best checkpoint, as two consecutive `train.py` runs would.
    `args` are the shared CLI arguments including `--seed_everything=<seed>`; `env` the seed's
    environment (W&B labels, figures on or off). Returns a result message: status finished or
    failed, the run's outcome from summary.json, the error if any."""
    from cnnlab.records import read_summary

    started = time.time()
    result: dict = {"event": "result", "seed": seed, "status": "failed", "pid": os.getpid()}
    run_dir = None
    try:
        with warnings.catch_warnings():
            if state is not None:
                state.restore()
            os.environ.update(env or {})
            try:
                run_dir = run_cli("fit", args)
            finally:
                run_dir = run_dir or (Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else None)
            summary = read_summary(run_dir)
            if summary.get("seed") != seed:
                raise CnnlabError(f"The run in {run_dir} recorded seed {summary.get('seed')}, not {seed}.")
            if summary.get("status") != "finished":
                raise CnnlabError(f"fit of seed {seed} ended with status {summary.get('status')!r} in {run_dir}.")
            best = summary.get("best_checkpoint") or summary.get("last_checkpoint")
            if not best:
                raise CnnlabError(f"fit of seed {seed} wrote no checkpoint to test ({run_dir}/checkpoints/).")
            release_memory()
        with warnings.catch_warnings():
            if state is not None:
                state.restore()
            os.environ.update(env or {})
            evaluation = run_cli("test", [*args, f"--ckpt_path={best}"])
        summary = read_summary(run_dir)
        if not is_complete(summary, seed):
            raise CnnlabError(f"test of seed {seed} left no test record in {run_dir}/summary.json ({evaluation}).")
        result |= outcome_of(summary)
        result["status"] = "finished"
    except (Stop, KeyboardInterrupt):
        raise
    except SystemExit as err:
        # jsonargparse prints a refused argument to stderr (this seed's log) and exits
        result["error"] = f"the CLI exited with code {err.code}: {log_tail(log) or 'no message'}"
    except CnnlabError as err:
        result["error"] = str(err)
    except Exception as err:
        tb = traceback.format_exception(err)
        result["error"] = f"{type(err).__name__}: {err}\n" + "".join(tb[-3:])
    finally:
        release_memory()
    result["run_dir"] = result.get("run_dir") or (str(run_dir) if run_dir else None)
    result["seconds"] = round(time.time() - started, 3)
    if result["status"] == "failed":
        print(f"cnnlab-seeds: seed {seed} failed: {result['error']}", file=sys.stderr)
    return result


def log_tail(log: Path | None, lines: int = ERROR_LINES) -> str:
    if log is None or not log.is_file():
        return ""
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors, so Lightning's and W&B's output too)
    to `path` for the duration of one seed."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def watch_parent(parent: int) -> None:
    """Orphaned (the launcher was killed): end this worker and its children (W&B's service) at once,
    rather than finishing a seed nobody will record."""
    while True:
        if os.getppid() != parent:
            with contextlib.suppress(OSError):
                if os.getpgid(0) == os.getpid():
                    os.killpg(0, signal.SIGKILL)
            os._exit(1)
        time.sleep(0.5)


def raise_stop(signum, frame) -> None:
    raise Stop()


def prepare_process(threads: int | None) -> ProcessState:
    """Make this process a warm seed runner (a local worker or a Ray actor): import torch and the
    CLI once, set its torch threads, and capture the state every seed starts from."""
    sys.argv = ["train.py"]  # LightningCLI warns when it is given args and sys.argv holds others too

    import torch

    import cnnlab.cli  # noqa: F401  (the import that costs seconds; paid once per worker)

    if threads:
        torch.set_num_threads(threads)
    state = ProcessState.capture()
    # The imports leave ~500,000 objects that live as long as the worker. Every full collection
    # walked them all (0.4 s a time: release_memory's two a seed, and the collector's own), though
    # none can ever be garbage; frozen, they are skipped, and what a seed leaves is still collected.
    gc.collect()
    gc.freeze()
    return state


def run_task(task: dict, state: ProcessState) -> dict:
    """One task of the launcher (seed, attempt, args, env, log): the seed's output goes to its log,
    and the result message comes back. The local worker and the Ray actor both run seeds here."""
    log = Path(task["log"])
    with output_to(log):
        print(f"\n===== seed {task['seed']}, attempt {task.get('attempt', 1)}, worker {os.getpid()} =====")
        return run_seed(task["seed"], task["args"], state, log, task.get("env"))


def serve(threads: int | None) -> int:
    """The worker's main loop. Returns the exit code."""
    parent = os.getppid()
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    # stdout carries the protocol; everything printed goes to stderr (the worker's log) instead.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    state = prepare_process(threads)
    spawned = float(os.environ.get(SPAWNED_AT_ENV, time.time()))
    ready = {"event": "ready", "pid": os.getpid(), "startup_seconds": round(time.time() - spawned, 3)}
    protocol.write(json.dumps(ready) + "\n")
    try:
        for line in sys.stdin:
            result = run_task(json.loads(line), state)
            protocol.write(json.dumps(result, default=str) + "\n")
    except (Stop, KeyboardInterrupt):
        finish_wandb(exit_code=130)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else None))
