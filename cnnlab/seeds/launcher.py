"""The seed launcher: one config over a range of model seeds in `--jobs` warm worker processes,
with a registry that makes a re-run resume, replacement of crashed or hung workers, a clean stop on
Ctrl-C and a live progress line. The launcher itself never imports torch: it starts in a blink
and stays responsive while workers train.
"""

import contextlib
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnlab.errors import CnnlabError
from cnnlab.seeds.registry import Registry, SeedRecord, is_complete, outcome_of
from cnnlab.seeds.worker import SPAWNED_AT_ENV

DEFAULT_ROOT = "runs"
WANDB_LOGGER = "cnnlab.wandb_logger.WandbLogger"  # CnnlabCLI's default logger
RESERVED = {
    "--seed_everything": "the model seed is the launcher's: give the seeds with --seeds",
    "--experiment": "the sweep's runs go in <root>/<name>/: give the name with --name",
    "--trainer.default_root_dir": "the sweep's runs go in <root>/<name>/: give the root with --root",
    "--ckpt_path": "every seed trains from scratch and tests its own best checkpoint",
    "--print_config": "it would print instead of training",
    "--help": "it would print instead of training",
}
STOP_GRACE_S = 10.0  # a stopping worker's time to end its W&B run before it is killed
MAX_START_FAILURES = 2  # consecutive workers that died before becoming ready: the sweep cannot run
FAIL_FAST = 3  # this many failures, no success, one identical error: stop instead of failing every seed


@dataclass
class Sweep:
    """What a user asks `cnnlab-seeds run` for."""

    name: str
    configs: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    root: Path = Path(DEFAULT_ROOT)
    jobs: int = 1
    threads: int | None = None
    timeout: float | None = None
    gpus: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "seed"
    retry_failed: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", self.name):
            raise CnnlabError(
                f"--name {self.name!r} is not usable as a folder name. Use letters, digits, '.', '_', '+' "
                "or '-', starting with a letter or digit (e.g. mnist-cnn)."
            )
        if self.jobs < 1:
            raise CnnlabError(f"--jobs is {self.jobs}; give at least 1 worker process.")
        if self.timeout is not None and self.timeout <= 0:
            raise CnnlabError(f"--timeout is {self.timeout}; give seconds per seed above 0, or leave it out.")
        for config in self.configs:
            if not Path(config).is_file():
                raise CnnlabError(
                    f"--config {config}: no such file. Give an experiment YAML, e.g. configs/mnist_classifier.yaml."
                )
        check_overrides(self.overrides)

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def worker_threads(self) -> int:
        """Torch threads per worker: the machine's cores shared out, so jobs do not oversubscribe."""
        return self.threads or max(1, available_cpus() // self.jobs)

    def identity(self) -> dict:
        """What makes two invocations the same sweep: the configs' contents and the overrides.
        The seed range may grow; jobs, timeout and devices may change."""
        configs = [{"path": c, "sha256": hashlib.sha256(Path(c).read_bytes()).hexdigest()} for c in self.configs]
        return {"configs": configs, "overrides": list(self.overrides)}

    def args(self, seed: int, wandb: bool) -> list[str]:
        """The CLI arguments of one seed (without the subcommand): the user's, then the sweep's."""
        args = [f"--config={c}" for c in self.configs]
        args += ["--trainer.enable_progress_bar=false", *self.overrides]
        args += [f"--experiment={self.name}", f"--trainer.default_root_dir={self.root}"]
        if wandb:
            args += wandb_overrides(self.name, self.configs, self.overrides, self.job_type, self.tags)
        # last, so nothing in a config file or an override can change it
        args.append(f"--seed_everything={seed}")
        return args


def wandb_overrides(group: str, configs: list[str], given: list[str], job_type: str, tags: list[str]) -> list[str]:
    """W&B logger arguments of a seed run: group = the sweep, its job type, tags naming the configs;
    whatever the user set explicitly is kept."""
    prefix = "--trainer.logger.init_args."
    said = " ".join(given)
    args = []
    if f"{prefix}group" not in said:
        args.append(f"{prefix}group={group}")
    if f"{prefix}job_type" not in said:
        args.append(f"{prefix}job_type={job_type}")
    if f"{prefix}tags" not in said:
        args.append(f"{prefix}tags={json.dumps(['cnnlab-seeds', *(Path(c).stem for c in configs), *tags])}")
    return args


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3', '0,5,10-19' -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise CnnlabError(
                f"--seeds {text!r}: could not read {part!r}. Give seeds as a range and/or a list of "
                "non-negative integers, e.g. 0-99 or 0,1,2 or 0-9,100-109."
            )
        seeds.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    if max(seeds) >= 2**32:
        raise CnnlabError(f"--seeds {text!r}: seeds must be below 2**32 (numpy's limit), got {max(seeds)}.")
    return sorted(seeds)


def check_overrides(overrides: list[str]) -> None:
    for token in overrides:
        key = token.split("=", 1)[0]
        if key in RESERVED or key == "-h":
            raise CnnlabError(
                f"{key} cannot be passed to a seed sweep: {RESERVED.get(key, RESERVED['--help'])}. Remove it; "
                "every other --model/--data/--trainer override is passed to each seed as given."
            )


def logger_class_path(configs: list[str], overrides: list[str]) -> str | None:
    """The class_path of the run's logger as the CLI will resolve it (the default, then config files
    in order, then overrides); None for no logger or several."""
    logger: object = {"class_path": WANDB_LOGGER}
    for config in configs:
        trainer = (yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {}
        if isinstance(trainer, dict) and "logger" in trainer:
            logger = trainer["logger"]
    for i, token in enumerate(overrides):
        key, _, value = token.partition("=")
        if key in ("--trainer.logger", "--trainer.logger.class_path"):
            if not _ and i + 1 < len(overrides):
                value = overrides[i + 1]
            value = yaml.safe_load(value)
            logger = {"class_path": value} if key.endswith("class_path") else value
    if isinstance(logger, dict):
        return logger.get("class_path")
    return logger if isinstance(logger, str) else None


def available_cpus() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def detect_gpus() -> list[str]:
    """GPU ids to share out: CUDA_VISIBLE_DEVICES where set, else what nvidia-smi lists, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_of(slot: int, gpus: list[str]) -> str | None:
    """Worker slot -> the GPU it sees (round-robin; several jobs may share a GPU), None for CPU."""
    return gpus[slot % len(gpus)] if gpus else None


def same_error(errors: list[str]) -> bool:
    """Errors that differ only in numbers (seed, paths with timestamps) are the same error."""
    return len({re.sub(r"\d+", "#", e or "") for e in errors}) == 1


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """One status line: rewritten in place on a terminal, a new line per finished seed elsewhere."""

    def __init__(self, name: str, total: int, stream=None) -> None:
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = ""

    def line(self, done: int, failed: int, running: int, eta: float | None, per_seed: float | None) -> str:
        todo = self.total - done - failed - running
        text = f"[{self.name}] {done}/{self.total} done, {failed} failed, {running} running, {todo} queued"
        if per_seed is not None:
            text += f" | {per_seed:.1f} s/seed"
        text += f" | ETA {format_seconds(eta)}" if eta is not None else " | ETA after the first seed"
        return text

    def show(self, done: int, failed: int, running: int, eta: float | None, per_seed: float | None) -> None:
        text = self.line(done, failed, running, eta, per_seed)
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif (done, failed) != getattr(self, "_shown", None):
            self._shown = (done, failed)
            print(text, file=self.stream, flush=True)
        self.last = text

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


class Worker:
    """One worker process and the seed it is running."""

    def __init__(self, slot: int, sweep: Sweep, device: str | None, log: Path) -> None:
        self.slot, self.device, self.log = slot, device, log
        self.seed: int | None = None
        self.since = 0.0
        self.ready = False
        self.buffer = b""
        self.messages: list[dict] = []
        env = {**os.environ, SPAWNED_AT_ENV: repr(time.time()), "OMP_NUM_THREADS": str(sweep.worker_threads)}
        # the worker imports the very code the launcher sees (a checkout, not only an install)
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cnnlab.seeds.worker", str(sweep.worker_threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                # its own process group: Ctrl-C reaches the launcher only, which stops workers in order
                start_new_session=True,
            )
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, task: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self) -> bool:
        """Take what the worker wrote; False at end of file."""
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.messages.append(json.loads(line))
        return bool(chunk)

    def drain(self) -> None:
        """Read what is left in the pipe of a worker that has exited."""
        os.set_blocking(self.proc.stdout.fileno(), False)
        with contextlib.suppress(BlockingIOError, OSError, ValueError):
            while self.read():
                pass

    def close_input(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def stop(self, grace: float) -> None:
        """SIGTERM (the worker ends its W&B run), then SIGKILL to whatever is left of its group."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.close_input()


class Launcher:
    """Runs a Sweep to the end, or until Ctrl-C; returns the exit code (0 all finished, 1 some
    seeds failed, 130 interrupted)."""

    def __init__(self, sweep: Sweep, stream=None) -> None:
        self.sweep = sweep
        self.stream = stream or sys.stderr
        self.workers: list[Worker] = []
        self.queue: list[int] = []
        self.wandb = logger_class_path(sweep.configs, sweep.overrides) == WANDB_LOGGER
        self.gpus = sweep.gpus if sweep.gpus is not None else detect_gpus()
        self.session = {"finished": 0, "failed": 0, "errors": [], "first_dispatch": None}
        self.start_failures = 0

    def say(self, text: str) -> None:
        print(f"cnnlab-seeds: {text}", file=self.stream, flush=True)

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> int:
        sweep = self.sweep
        sweep.dir.mkdir(parents=True, exist_ok=True)
        with sweep_lock(sweep.dir), Registry(sweep.dir) as registry:
            self.registry = registry
            self._check_identity()
            registry.add_pending(sweep.seeds)
            self._recover()
            records = {r.seed: r for r in registry.records()}
            skip = {"finished"} | (set() if sweep.retry_failed else {"failed"})
            self.queue = [s for s in sweep.seeds if records[s].status not in skip]
            done = len(sweep.seeds) - len(self.queue)
            if not self.queue:
                self.say(f"all {len(sweep.seeds)} seeds of '{sweep.name}' are already done ({sweep.dir}).")
                return self._exit_code()
            devices = ", ".join(f"GPU {g}" for g in self.gpus) if self.gpus else "CPU"
            self.say(
                f"sweep '{sweep.name}': {len(self.queue)} seeds to run ({done} already done) in {sweep.jobs} "
                f"worker(s), {sweep.worker_threads} torch thread(s) each, on {devices}; runs in {sweep.dir}/"
            )
            self.progress = Progress(sweep.name, len(sweep.seeds), self.stream)
            try:
                self._loop()
            except KeyboardInterrupt:
                self._stop_all("interrupted", "stopped by the user (Ctrl-C)")
                self.progress.close()
                counts = self._counts()
                self.say(
                    f"interrupted: {counts['finished']} seeds finished, {counts['failed']} failed, the rest not run. "
                    "Run the same command again to resume (finished seeds are kept)."
                )
                return 130
            except BaseException:
                self._stop_all("interrupted", "the launcher stopped on an error")
                raise
            finally:
                self.progress.close()
            counts = self._counts()
            self.say(
                f"sweep '{sweep.name}': {counts['finished']} of {len(sweep.seeds)} seeds finished. "
                f"Distributions and statistics: cnnlab-seeds report {sweep.name}"
                + ("" if sweep.root == Path(DEFAULT_ROOT).resolve() else f" --root {sweep.root}")
            )
            return self._exit_code()

    def _exit_code(self) -> int:
        records = [r for r in self.registry.records() if r.seed in set(self.sweep.seeds)]
        failed = [r for r in records if r.status != "finished"]
        if failed:
            self.say(
                f"{len(failed)} of {len(records)} seeds did not finish: "
                + ", ".join(f"{r.seed} ({r.status})" for r in failed[:10])
                + (" ..." if len(failed) > 10 else "")
                + f". Errors: cnnlab-seeds report {self.sweep.name}; logs in {self.sweep.dir / 'logs'}/."
            )
            return 1
        return 0

    def _check_identity(self) -> None:
        meta = self.registry.meta()
        identity = self.sweep.identity()
        if not meta:
            self.registry.set_meta(name=self.sweep.name, identity=identity, created=time.time(), wandb=self.wandb)
            return
        if meta.get("identity") != identity:
            raise CnnlabError(
                f"The sweep '{self.sweep.name}' in {self.sweep.dir} was started with other settings "
                f"({json.dumps(meta.get('identity'))}) than now ({json.dumps(identity)}); mixing them would "
                "make its distribution meaningless. Run with the same --config files (unchanged) and overrides to "
                "resume it, or give a new --name for the new settings."
            )

    def _recover(self) -> None:
        """After a killed launcher: seeds left 'running' are unfinished, unless their run completed
        (the worker finished, the launcher died before recording it): those are adopted."""
        for record in self.registry.records():
            if record.status == "finished" or record.seed not in set(self.sweep.seeds):
                continue
            found = self._completed_run(record.seed)
            if found is not None:
                summary = json.loads((found / "summary.json").read_text())
                self._store(record, {"status": "finished", **outcome_of(summary), "error": None})
            elif record.status == "running":
                self.registry.mark([record.seed], "interrupted", "the launcher stopped while this seed ran")

    def _completed_run(self, seed: int) -> Path | None:
        candidates = [*self.sweep.dir.glob(f"*-seed{seed}"), *self.sweep.dir.glob(f"*-seed{seed}-[0-9]*")]
        for run in sorted(candidates, reverse=True):
            with contextlib.suppress(OSError, ValueError):
                if is_complete(json.loads((run / "summary.json").read_text()), seed):
                    return run
        return None

    # -- the event loop --------------------------------------------------------------------

    def _loop(self) -> None:
        sweep = self.sweep
        self.selector = selectors.DefaultSelector()
        for slot in range(min(sweep.jobs, len(self.queue))):
            self._start_worker(slot)
        while self.workers:
            for key, _ in self.selector.select(timeout=0.5):
                worker = key.data
                if not worker.read():
                    self.selector.unregister(worker.proc.stdout)
                self._handle_messages(worker)
            now = time.time()
            for worker in list(self.workers):
                if worker.seed is not None and sweep.timeout and now - worker.since > sweep.timeout:
                    self._timed_out(worker)
                elif worker.proc.poll() is not None:
                    self._exited(worker)
            self._show()
            self._fail_fast()

    def _start_worker(self, slot: int) -> None:
        worker = Worker(slot, self.sweep, device_of(slot, self.gpus), self.sweep.dir / "logs" / f"worker{slot}.log")
        self.selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)

    def _handle_messages(self, worker: Worker) -> None:
        while worker.messages:
            message = worker.messages.pop(0)
            if message["event"] == "ready":
                worker.ready = True
                self.start_failures = 0
                self._dispatch(worker)
            elif message["event"] == "result" and message["seed"] == worker.seed:
                record = self.registry.get(worker.seed)
                fields = {k: v for k, v in message.items() if k not in ("event", "pid")}
                self._store(record, {**fields, "finished": time.time()})
                self.session["finished" if message["status"] == "finished" else "failed"] += 1
                if message["status"] != "finished":
                    self.session["errors"].append(message.get("error") or "")
                worker.seed = None
                self._dispatch(worker)

    def _dispatch(self, worker: Worker) -> None:
        if worker.proc.poll() is not None:
            return
        if not self.queue:
            worker.close_input()  # the worker ends its loop and exits
            return
        seed = self.queue.pop(0)
        self.registry.mark_running(seed, worker.pid, worker.device or "cpu")
        attempt = self.registry.get(seed).attempts
        task = {
            "seed": seed,
            "attempt": attempt,
            "args": self.sweep.args(seed, self.wandb),
            "log": str(self.sweep.dir / "logs" / f"seed{seed}.log"),
        }
        worker.seed, worker.since = seed, time.time()
        self.session["first_dispatch"] = self.session["first_dispatch"] or worker.since
        worker.send(task)  # a dead worker is noticed by the loop, which fails this seed

    def _timed_out(self, worker: Worker) -> None:
        seed = worker.seed
        worker.stop(grace=5.0)
        self._fail(seed, f"timed out after {self.sweep.timeout:g} s (--timeout); its worker was killed and replaced")
        worker.seed = None
        self._exited(worker)

    def _exited(self, worker: Worker) -> None:
        """A worker is gone: take its last words, fail the seed it still held, replace it while
        seeds are left."""
        worker.stop(grace=0)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.proc.stdout)
        worker.drain()
        self._handle_messages(worker)
        self.workers.remove(worker)
        code = worker.proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if worker.seed is not None:
            tail = _tail(self.sweep.dir / "logs" / f"seed{worker.seed}.log")
            self._fail(worker.seed, f"its worker process {how} (crash or out of memory); last output:\n{tail}")
        if not worker.ready:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                log = self.sweep.dir / "logs" / f"worker{worker.slot}.log"
                raise CnnlabError(
                    f"{self.start_failures} worker processes in a row {how} before they could run a seed, so none "
                    f"can. Their output ends with:\n{_tail(log)}\nFix the cause (see {log}) and run the same "
                    "command again."
                )
        if self.queue:
            self._start_worker(worker.slot)

    def _fail(self, seed: int, error: str) -> None:
        record = self.registry.get(seed)
        self._store(record, {"status": "failed", "error": error, "finished": time.time()})
        self.session["failed"] += 1
        self.session["errors"].append(error)

    def _store(self, record: SeedRecord, values: dict) -> None:
        for key, value in values.items():
            if hasattr(record, key):
                setattr(record, key, value)
        self.registry.put(record)

    def _fail_fast(self) -> None:
        errors = self.session["errors"]
        if self.session["finished"] == 0 and len(errors) >= FAIL_FAST and same_error(errors):
            self._stop_all("interrupted", "the sweep was stopped: every seed failed the same way")
            raise CnnlabError(
                f"The first {len(errors)} seeds of this run all failed with the same error, so every seed would:\n"
                f"{errors[0]}\nThe sweep is stopped. Fix the config or overrides (the seed logs are in "
                f"{self.sweep.dir / 'logs'}/) and run the same command again; seeds that finished are kept."
            )

    def _stop_all(self, status: str, why: str) -> None:
        """SIGTERM every worker (each ends its W&B run), wait up to STOP_GRACE_S (a second Ctrl-C
        cuts the wait short), then SIGKILL what is left; running seeds get `status`."""
        try:
            for worker in self.workers:
                if worker.proc.poll() is None:
                    worker.signal(signal.SIGTERM)
            deadline = time.time() + STOP_GRACE_S
            for worker in self.workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(max(0.0, deadline - time.time()))
        except KeyboardInterrupt:
            pass
        finally:
            for worker in self.workers:
                worker.stop(grace=0)
                if worker.seed is not None:
                    self.registry.mark([worker.seed], status, why)
                    worker.seed = None
            self.workers = []

    def _counts(self) -> dict[str, int]:
        """Seed statuses among this invocation's seeds (the registry may hold more)."""
        seeds = set(self.sweep.seeds)
        counts = {"finished": 0, "failed": 0}
        for record in self.registry.records():
            if record.seed in seeds and record.status in counts:
                counts[record.status] += 1
        return counts

    def _show(self) -> None:
        counts = self._counts()
        running = sum(1 for w in self.workers if w.seed is not None)
        done_now = self.session["finished"] + self.session["failed"]
        eta = per_seed = None
        if done_now:
            elapsed = time.time() - self.session["first_dispatch"]
            per_seed = elapsed / done_now  # wall seconds per seed with all workers going
            eta = per_seed * (len(self.queue) + running)
        self.progress.show(counts["finished"], counts["failed"], running, eta, per_seed)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path):
    """One launcher per sweep at a time (two would run the same seeds twice)."""
    import fcntl

    path = sweep_dir / ".launcher.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise CnnlabError(
                f"Another cnnlab-seeds launcher (pid {handle.read().strip() or '?'}) is running the sweep in "
                f"{sweep_dir}. Wait for it, or stop it (Ctrl-C) before starting this one; the report can be "
                "made while it runs."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 12) -> str:
    if not path.is_file():
        return "(no output)"
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:]) or "(no output)"
