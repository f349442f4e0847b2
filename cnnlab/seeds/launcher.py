"""The seed launcher: runs a Sweep (cnnlab/seeds/sweep.py) over its seeds in `--jobs` warm worker
processes (cnnlab/seeds/pool.py), with a registry that makes a re-run resume, replacement of crashed or
hung workers, a clean stop on Ctrl-C (unfinished runs marked interrupted) and a live progress line.
The launcher itself never imports torch: it starts in a blink and stays responsive while workers train.
"""

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.run_dir import EVALUATIONS, RUNS_ROOT
from cnnlab.seeds.pool import Worker, detect_gpus, device_of, threads_per_worker
from cnnlab.seeds.progress import Progress
from cnnlab.seeds.registry import Registry, SeedRecord, is_complete, outcome_of
from cnnlab.seeds.sweep import Sweep
from cnnlab.seeds.worker import log_tail
from cnnlab.summary_files import read_summary, update_summary

STOP_GRACE_S = 10.0  # a stopping worker's time to end its W&B run before it is killed
MAX_START_FAILURES = 2  # consecutive workers that died before becoming ready: the sweep cannot run
HOST = socket.gethostname()
FAIL_FAST = 3  # this many failures, no success, one identical error: stop instead of failing every seed


def same_error(errors: list[str]) -> bool:
    """Errors that differ only in numbers (seed, paths with timestamps) are the same error."""
    return len({re.sub(r"\d+", "#", e or "") for e in errors}) == 1


def seed_runs(sweep_dir: Path, seed: int) -> list[Path]:
    """The training run directories of one seed in a sweep, newest first."""
    found = [*sweep_dir.glob(f"*-seed{seed}"), *sweep_dir.glob(f"*-seed{seed}-[0-9]*")]
    return sorted((p for p in found if p.is_dir()), reverse=True)


def mark_interrupted(run: Path, why: str) -> list[Path]:
    """A run left 'running' by a stopped, killed or lost worker says so, instead of running forever: the
    run's own record, and an evaluation of it that was running (the seed's test; also listed in the
    run's `evaluations` then, as cnnlab/records.py's settle_abandoned lists one). Returns what it marked."""

    def mark(summary: dict) -> None:
        if summary.get("status") == "running":
            summary |= {"status": "interrupted", "error": why}

    marked = []
    for directory in [run, *sorted((run / EVALUATIONS).glob("*/"))]:
        summary = read_summary(directory)
        if summary.get("status") != "running":
            continue
        update_summary(directory, mark)
        marked.append(directory)
        if directory != run:
            entry = {k: summary.get(k) for k in ("subcommand", "dir", "checkpoint", "started")}
            entry |= {"status": "interrupted", "error": why}
            update_summary(run, lambda record, entry=entry: record.setdefault("evaluations", []).append(entry))
    return marked


class Launcher:
    """Runs a Sweep to the end, or until Ctrl-C; returns the exit code (0 all finished, 1 some
    seeds failed, 130 interrupted)."""

    def __init__(self, sweep: Sweep, stream=None) -> None:
        self.sweep = sweep
        self.stream = stream or sys.stderr
        self.workers: list[Worker] = []
        self.queue: list[int] = []
        self.threads = threads_per_worker(sweep.threads, sweep.jobs)
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
            try:
                self._open()  # inside: what it took before refusing (a Ray connection) is released too
                self.say(self._plan(done))
                self.progress = Progress(sweep.name, len(sweep.seeds), self.stream)
                try:
                    self._loop()
                except KeyboardInterrupt:
                    self._stop_all("interrupted", "stopped by the user (Ctrl-C)")
                    self.progress.close()
                    counts = self.registry.counts(sweep.seeds)
                    self.say(
                        f"interrupted: {counts['finished']} seeds finished, {counts['failed']} failed, the rest not "
                        "run. Run the same command again to resume (finished seeds are kept)."
                    )
                    self._say_sync()
                    return 130
                except BaseException:
                    self._stop_all("interrupted", "the launcher stopped on an error")
                    raise
                finally:
                    self.progress.close()
            finally:
                self._close()
            counts = self.registry.counts(sweep.seeds)
            self.say(
                f"sweep '{sweep.name}': {counts['finished']} of {len(sweep.seeds)} seeds finished. "
                f"Distributions and statistics: cnnlab-seeds report {sweep.name}"
                + ("" if sweep.root == Path(RUNS_ROOT).resolve() else f" --root {sweep.root}")
            )
            self._say_sync()
            return self._exit_code()

    # -- what differs between the local pool and other backends (cnnlab/seeds/ray_backend.py) -----

    def _open(self) -> None:
        """Get ready to run seeds (the local pool needs nothing before its workers start)."""

    def _close(self) -> None:
        """Release what _open took."""

    def _plan(self, done: int) -> str:
        devices = ", ".join(f"GPU {g}" for g in self.gpus) if self.gpus else "CPU"
        return (
            f"sweep '{self.sweep.name}': {len(self.queue)} seeds to run ({done} already done) in {self.sweep.jobs} "
            f"worker(s), {self.threads} torch thread(s) each, on {devices}; runs in {self.sweep.dir}/"
        )

    def _say_sync(self) -> None:
        """Where W&B ran offline: the one command that uploads the whole sweep, each seed's W&B run
        with the test that logged into it."""
        ids = [r.wandb_id for r in self.registry.records() if r.wandb_id]
        command = self.sweep.wandb_sync_command(ids)
        if command:
            self.say(f"W&B ran offline; upload the sweep's runs (fit and test of each seed) with:\n  {command}")

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
            self.registry.set_meta(name=self.sweep.name, identity=identity, created=time.time())
            return
        if meta.get("identity") != identity and not self.registry.counts()["finished"]:
            # Nothing finished under the old settings (a typo stopped it): the fixed command starts it afresh.
            self.say("no seed of this sweep had finished; starting it again with the settings given now.")
            self.registry.set_meta(identity=identity, restarted=time.time())
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
                self._adopt(record.seed, found)
            elif record.status == "running":
                why = "the launcher stopped while this seed ran"
                self.registry.mark([record.seed], "interrupted", why)
                for run in seed_runs(self.sweep.dir, record.seed):
                    mark_interrupted(run, why)

    def _adopt(self, seed: int, run: Path) -> None:
        """Take a seed's completed run (found on disk, its result never received) as its result; not
        counted as this session's work (the progress line's seconds per seed)."""
        self._store(self.registry.get(seed), {"status": "finished", **outcome_of(read_summary(run)), "error": None})

    def _completed_run(self, seed: int) -> Path | None:
        for run in seed_runs(self.sweep.dir, seed):
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
        log = self.sweep.dir / "logs" / f"worker{slot}.log"
        worker = Worker(slot, self.threads, device_of(slot, self.gpus), log)
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
                self._record_result(message)
                worker.seed = None
                self._dispatch(worker)

    def _record_result(self, message: dict) -> None:
        """A seed's result message (cnnlab/seeds/worker.py: run_seed) into its registry record."""
        record = self.registry.get(message["seed"])
        fields = {k: v for k, v in message.items() if k not in ("event", "pid")}
        self._store(record, {**fields, "finished": time.time()})
        self.session["finished" if message["status"] == "finished" else "failed"] += 1
        if message["status"] != "finished":
            self.session["errors"].append(message.get("error") or "")

    def _task(self, seed: int) -> dict:
        """What a worker needs to run `seed`'s next attempt (marked running just before)."""
        return {
            "seed": seed,
            "attempt": self.registry.get(seed).attempts,
            "args": self.sweep.args(seed),
            "env": self.sweep.env(seed),
            "log": str(self.sweep.dir / "logs" / f"seed{seed}.log"),
        }

    def _dispatch(self, worker: Worker) -> None:
        if worker.proc.poll() is not None:
            return
        if not self.queue:
            worker.close_input()  # the worker ends its loop and exits
            return
        seed = self.queue.pop(0)
        self.registry.mark_running(seed, worker.pid, f"GPU {worker.device}" if worker.device else "cpu", HOST)
        task = self._task(seed)
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
            tail = log_tail(self.sweep.dir / "logs" / f"seed{worker.seed}.log") or "(no output)"
            self._fail(worker.seed, f"its worker process {how} (crash or out of memory); last output:\n{tail}")
        if not worker.ready:
            log = self.sweep.dir / "logs" / f"worker{worker.slot}.log"
            self._start_failed(f"worker processes in a row {how}", f"Their output ends with:\n{log_tail(log)}", log)
        if self.queue:
            self._start_worker(worker.slot)

    def _start_failed(self, what: str, said: str, log: Path) -> None:
        """One more worker that ended before it could run a seed; MAX_START_FAILURES in a row: none can."""
        self.start_failures += 1
        if self.start_failures >= MAX_START_FAILURES:
            raise CnnlabError(
                f"{self.start_failures} {what} before they could run a seed, so none can. {said or '(no output)'}\n"
                f"Fix the cause (see {log}) and run the same command again."
            )

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
                f"{self.sweep.dir / 'logs'}/) and run the command again with the fix: a sweep with no finished "
                "seed takes the new settings."
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
                    for run in seed_runs(self.sweep.dir, worker.seed):
                        mark_interrupted(run, why)
                    worker.seed = None
            self.workers = []

    def _show(self) -> None:
        counts = self.registry.counts(self.sweep.seeds)
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
