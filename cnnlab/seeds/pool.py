"""The launcher's worker processes: how many torch threads each gets, which GPU it sees, and the process
itself (started with its own process group, fed tasks as JSON lines, stopped with SIGTERM then SIGKILL).
The worker's side is cnnlab/seeds/worker.py."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.environment import SPAWNED_AT_ENV
from cnnlab.errors import CnnlabError


def available_cpus() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(threads: int | None, jobs: int) -> int:
    """Torch threads of each worker: `--threads`, else OMP_NUM_THREADS where set (per process, as it
    means for any OpenMP program: a user who set it to 1 on a shared machine gets 1), else the cores
    shared out. Read here because each worker is started with OMP_NUM_THREADS set to the choice (so
    what it starts, DDP ranks, agrees): a user's value not read here is overwritten and lost."""
    if threads is not None:
        return threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not omp:
        return max(1, available_cpus() // jobs)
    first = omp.split(",")[0].strip()  # "4,2": nested levels; torch's own threads are the first
    if not first.isdigit() or int(first) < 1:
        raise CnnlabError(
            f"OMP_NUM_THREADS is {omp!r}, which is not a number of threads; cnnlab-seeds gives each worker that "
            "many torch threads when it is set. Set it to a positive integer (e.g. OMP_NUM_THREADS=1), unset "
            "it, or give --threads N."
        )
    return int(first)


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


class Worker:
    """One worker process and the seed it is running."""

    def __init__(self, slot: int, threads: int, device: str | None, log: Path) -> None:
        self.slot, self.device, self.log = slot, device, log
        self.seed: int | None = None
        self.since = 0.0
        self.ready = False
        self.buffer = b""
        self.messages: list[dict] = []
        env = {**os.environ, SPAWNED_AT_ENV: repr(time.time()), "OMP_NUM_THREADS": str(threads)}
        # the worker imports the very code the launcher sees (a checkout, not only an install)
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cnnlab.seeds.worker", str(threads)],
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
