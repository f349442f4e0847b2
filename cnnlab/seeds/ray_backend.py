"""`cnnlab-seeds run --backend ray`: a sweep's seeds on warm Ray actors, one per slot, anywhere on a
Ray cluster (docs/seeds.md: "On a cluster"; docs/design.md says why it is built this way).

What stays as on the local pool (cnnlab/seeds/launcher.py, whose Launcher this extends):
- the driver (this process) keeps the sweep's registry, on its own disk, the one source of truth:
  resume, retry of failed seeds, interrupted marks, the identity of the resolved settings;
- each actor imports torch and the CLI once and runs a seed exactly as a local worker does
  (cnnlab/seeds/worker.py: prepare_process, run_task), so a seed is what `train.py fit` then
  `train.py test` would make.

Where results land: shared storage. Every node writes a seed's run directory (records, checkpoints,
figures, W&B offline run) under the sweep folder at the same path, as on SLURM/NFS clusters, and the
driver checks that from every node before any seed runs. The driver imports no torch.
"""

import contextlib
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.seeds.launcher import STOP_GRACE_S, Launcher, mark_interrupted, seed_runs
from cnnlab.seeds.pool import available_cpus
from cnnlab.seeds.sweep import Sweep
from cnnlab.seeds.worker import log_tail

RAY_EXTRA = 'pip install -e ".[ray]"'
CONNECT_TIMEOUT_S = 30.0  # ray.init at an address that takes TCP connections but is no Ray cluster
PORT_TIMEOUT_S = 5.0  # a TCP connection to --address
CHECK_TIMEOUT_S = 120.0  # every node's answer to the storage check (a node may start a Python worker first)
MAX_NODE_LOSSES = 3  # attempts of one seed lost with their node before the seed counts as failed
NODE_VERDICT_S = 60.0  # how long an unreachable actor's node may take to be declared dead or alive
# The driver's environment that every seed sees, as a local worker inherits it: PL_* defaults of the
# CLI, W&B's settings, cnnlab's own. Not the API key: nodes use their own W&B login, or run offline.
FORWARDED = ("PL_", "WANDB_", "CNNLAB_")
KEPT_ON_DRIVER = {"WANDB_API_KEY"}
PROBE_DIR = ".nodes"  # the storage check's files, in the sweep folder
LOCAL_INSTANCE = "a Ray instance on this machine"  # where no --address is given: started by the driver


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise CnnlabError(
            f"--backend ray needs Ray, an optional extra of cnnlab that is not installed here ({err}). Install it "
            f'with {RAY_EXTRA} in the checkout (or pip install "cnnlab[ray]"), on this machine and on every node of '
            "the cluster; or leave --backend ray out to run the seeds on this machine's worker processes."
        ) from None
    return ray


# -- where the cluster is ------------------------------------------------------------------------------


def resolve_address(ray, given: str | None) -> str | None:
    """--address (or RAY_ADDRESS, as Ray reads it) as HOST:PORT, or None: start a Ray instance here.
    'auto' is the cluster that `ray start` started on this machine, as Ray finds it."""
    address = given or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        return None
    if address.startswith("ray://"):
        return address  # Ray Client: its own server answers, checked by connecting
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = None
        with contextlib.suppress(Exception):
            found = canonicalize_bootstrap_address("auto")
        if not found:
            raise CnnlabError(
                "--address auto: no Ray cluster was started on this machine (`ray start --head` makes one, and Ray "
                "notes its address for 'auto'). Start it, give the head's HOST:PORT (`ray start --head` prints it), "
                "or leave --address out to run on a Ray instance of this machine alone."
            )
        return found
    return address


def check_port(address: str, given: str | None) -> None:
    """Refuse at once an address with nothing listening: ray.init would wait a minute for it."""
    if address.startswith("ray://"):
        address = address[len("ray://") :]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CnnlabError(
            f"--address {given or address!r} is not HOST:PORT. Give the head node's address as `ray start --head` "
            "prints it (e.g. 10.0.0.5:6379), auto for the cluster started on this machine, or leave it out."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PORT_TIMEOUT_S).close()
    except OSError as err:
        raise CnnlabError(
            f"--address {given or address}: no Ray cluster answers at {host}:{port} ({err}). Start the head there "
            "(`ray start --head --port PORT` prints the address to give), check the host and port, or leave "
            "--address out to run on a Ray instance of this machine alone. No seed ran."
        ) from None


def connect(ray, given: str | None) -> str:
    """Connect the driver (starting a Ray instance here where no address is given); returns where."""
    address = resolve_address(ray, given)
    if address is not None:
        check_port(address, given)
    said = (
        f"--address {given or address}: the port answers, but no Ray cluster took this driver within "
        f"{CONNECT_TIMEOUT_S:g} s. Check that it is the head's GCS port (`ray start --head` prints it; 6379 by "
        "default), not another service's, and that this machine is a node of that cluster (run the command on "
        "the head, or `ray start --address HEAD:PORT` here first). No seed ran."
    )

    def give_up() -> None:
        print(f"\ncnnlab-seeds: error: {said}", file=sys.stderr, flush=True)
        os._exit(2)  # ray.init holds the main thread; nothing of the sweep was written yet

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    if address is not None:
        watchdog.start()
    try:
        if address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # our own instance: no usage report
            ray.init(
                address="local",  # a new instance, even where `ray start` left its address for Ray to find
                num_cpus=available_cpus(),
                include_dashboard=False,
                logging_level="ERROR",  # not Ray's notes on how a cluster could be set up: this one is ours
                # No idle Python workers started ahead: each actor gets a process of its own anyway, and
                # the idle ones (importing Ray as the actors import torch) only take the seeds' cores.
                _system_config={"prestart_worker_first_driver": False, "enable_worker_prestart": False},
                log_to_driver=False,
            )
            return LOCAL_INSTANCE
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        return f"the Ray cluster at {address}"
    except (ConnectionError, RuntimeError, ValueError) as err:  # no cluster; Ray or Python versions that differ
        where = f"--address {given or address}" if address else "Starting a Ray instance on this machine"
        raise CnnlabError(
            f"{where} failed: {err} Ray's versions (and Python's) must be the same on the driver and every node. "
            "No seed ran."
        ) from None
    finally:
        watchdog.cancel()


def seed_nodes(ray, cpus: int, gpus: float) -> list[dict]:
    """The live nodes that can hold one seed, with how many at once."""
    nodes = []
    for node in ray.nodes():
        have = node.get("Resources") or {}
        if not node.get("Alive") or have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
            continue
        fits = int(have["CPU"] // cpus)
        if gpus:
            fits = min(fits, int(have["GPU"] / gpus + 1e-9))  # 1.0 // 0.2 is 4.0 in floating point
        nodes.append({"id": node["NodeID"], "ip": node.get("NodeManagerAddress"), "fits": fits, "resources": have})
    return nodes


def describe_nodes(ray) -> str:
    parts = []
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources") or {}
            parts.append(
                f"{node.get('NodeManagerAddress')} ({node['NodeID'][:8]}): {have.get('CPU', 0):g} CPU, "
                f"{have.get('GPU', 0):g} GPU"
            )
    return "; ".join(parts) or "no live node"


# -- the storage check ---------------------------------------------------------------------------------


def probe_storage(probe_dir: str, token: str) -> dict:
    """Run on one node: can it read the driver's file in the sweep folder, and write one the driver
    will read? Says which node it is and which cnnlab it imports."""
    import ray

    from cnnlab.code_version import git_commit

    answer = {
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "commit": git_commit(),
    }
    try:
        answer["seen"] = (Path(probe_dir) / "driver").read_text().strip() == token
    except OSError as err:
        answer["seen"] = False
        answer["read_error"] = f"{type(err).__name__}: {err}"
    path = Path(probe_dir) / answer["node_id"]
    try:
        path.write_text(token)
        answer["wrote"] = str(path)
    except OSError as err:
        answer["write_error"] = f"{type(err).__name__}: {err}"
    return answer


def check_storage(ray, sweep_dir: Path, nodes: list[dict], commit: str | None) -> None:
    """From every node that can run a seed: the sweep folder is the driver's (a file the driver wrote
    is there) and writable (the driver reads back what the node wrote), and the node runs the same
    cnnlab. One paragraph naming each node that fails, before any seed runs."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe_dir = sweep_dir / PROBE_DIR
    probe_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    (probe_dir / "driver").write_text(token)
    remote = ray.remote(probe_storage)
    calls = {
        remote.options(
            num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["id"], soft=False)
        ).remote(str(probe_dir), token): node
        for node in nodes
    }
    answered, silent = ray.wait(list(calls), num_returns=len(calls), timeout=CHECK_TIMEOUT_S)
    problems = []
    for ref in answered:
        node = calls[ref]
        name = f"{node['ip']} (Ray node {node['id'][:8]})"
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            problems.append(f"node {name} could not run the check ({first}); is cnnlab installed there?")
            continue
        name = f"{answer['host']} {name}"
        if answer.get("write_error"):
            problems.append(f"node {name} cannot write {sweep_dir}: {answer['write_error']}")
        elif not answer["seen"] or Path(answer["wrote"]).read_text().strip() != token:
            why = answer.get("read_error") or "the file the driver wrote there is not there"
            problems.append(f"node {name} sees another {sweep_dir} than the driver ({why}): a disk of its own")
        elif commit and answer["commit"] and answer["commit"] != commit:
            problems.append(f"node {name} runs cnnlab at commit {answer['commit']}, the driver at {commit}")
    problems += [f"node {calls[ref]['ip']} (Ray node {calls[ref]['id'][:8]}) did not answer" for ref in silent]
    for path in probe_dir.iterdir():
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        probe_dir.rmdir()
    if problems:
        raise CnnlabError(
            f"Every node that runs seeds writes their records, checkpoints and W&B runs into {sweep_dir}, and the "
            "driver reads them there, so that folder must be on storage every node mounts at the same path (as on "
            f"SLURM/NFS clusters), with the same cnnlab installed. Checked from each node: {'; '.join(problems)}. "
            "Mount the storage on that node (or give --root on storage all nodes share), install the same cnnlab "
            "there, or take the node out of the cluster; then run the same command again. No seed ran."
        )


# -- the actors ----------------------------------------------------------------------------------------


def code_paths() -> list[str]:
    """Where the driver imports code from outside its Python installation (a checkout, its working
    directory, a folder of the user's callbacks): an actor puts those that its node has first on its
    path, so a seed imports what the driver sees, as a local worker does."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not any(path == p or path.startswith(p + os.sep) for p in prefixes) and path not in paths:
            paths.append(path)
    return paths


class SeedActor:
    """One slot of the sweep on a Ray node: a warm process that runs seeds one after another."""

    def __init__(self, environ: dict, paths: list[str], cwd: str, threads: int, log: str, gpus: bool) -> None:
        started = time.time()
        os.environ.update(environ)
        # Relative paths of the command line and the configs (data_dir: data) mean the driver's directory,
        # as for a local worker; a Ray worker starts wherever `ray start` ran.
        if os.path.isdir(cwd):
            os.chdir(cwd)
        if not gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a seed that asked Ray for no GPU uses none
        sys.path[:0] = [p for p in paths if os.path.isdir(p) and p not in sys.path]
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(handle, 1)  # what the actor prints between seeds goes to the sweep's logs, as a worker's
        os.dup2(handle, 2)
        os.close(handle)
        from cnnlab.seeds.worker import prepare_process

        self.state = prepare_process(threads)
        self.startup_seconds = round(time.time() - started, 3)

    def ready(self) -> dict:
        import ray

        gpu_ids = ray.get_gpu_ids()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": "GPU " + ",".join(str(g) for g in gpu_ids) if gpu_ids else "cpu",
            "startup_seconds": self.startup_seconds,
        }

    def run(self, task: dict) -> dict:
        from cnnlab.seeds.worker import run_task

        return run_task(task, self.state)


@dataclass
class Slot:
    """An actor and the call the driver waits on: its `ready`, then the seed it runs."""

    slot: int
    actor: object
    ref: object
    ready: bool = False
    info: dict = field(default_factory=dict)
    seed: int | None = None
    since: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    def where(self) -> str:
        if not self.info:
            return "a node"
        return f"node {self.info['host']} ({self.info['ip']}, Ray node {self.info['node_id'][:8]})"


class RayLauncher(Launcher):
    """The Launcher with Ray actors for worker processes."""

    def __init__(self, sweep: Sweep, stream=None) -> None:
        self.ray = import_ray()
        super().__init__(sweep, stream)
        self.gpus = []
        self.where = ""
        self.driver_cpu = 0.0

    # -- before and after the seeds -------------------------------------------------------------

    def _open(self) -> None:
        ray, sweep = self.ray, self.sweep
        self.where = connect(ray, sweep.address)
        self.gpus_per_seed = sweep.gpus_per_seed
        if self.gpus_per_seed and not ray.cluster_resources().get("GPU"):
            self.say(f"{self.where} has no GPU: the seeds run on CPU (--gpus-per-seed {sweep.gpus_per_seed:g} unused).")
            self.gpus_per_seed = 0.0
        nodes = seed_nodes(ray, sweep.cpus_per_seed, self.gpus_per_seed)
        if not nodes:
            raise CnnlabError(
                f"No node of {self.where} can run a seed: each asks for {sweep.cpus_per_seed} CPU(s)"
                + (f" and {self.gpus_per_seed:g} GPU" if self.gpus_per_seed else "")
                + f", and the live nodes have {describe_nodes(ray)}. Give --cpus-per-seed / --gpus-per-seed that "
                "fit a node, or add nodes (`ray start --address HEAD:PORT` on each). No seed ran."
            )
        self.capacity = sum(node["fits"] for node in nodes)
        self.jobs = sweep.jobs or self.capacity
        if self.where != LOCAL_INSTANCE:  # a Ray instance this process started has this machine for its one node
            from cnnlab.code_version import git_commit

            check_storage(ray, sweep.dir, nodes, git_commit())
        self.nodes = len(nodes)
        self.environ = {
            key: value for key, value in os.environ.items() if key.startswith(FORWARDED) and key not in KEPT_ON_DRIVER
        }
        self.environ["OMP_NUM_THREADS"] = str(self.threads)
        self.paths = code_paths()
        self.actor_class = ray.remote(SeedActor).options(
            num_cpus=sweep.cpus_per_seed,
            num_gpus=self.gpus_per_seed,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        )
        self.cpu_started = time.process_time()

    def _close(self) -> None:
        """Disconnect (stopping the instance where this process started it). The driver's CPU time from
        the first actor to the last result, the cost of scheduling, registry and results, goes into
        the registry's meta for benchmarks/ray_seeds.py."""
        try:
            if hasattr(self, "cpu_started"):
                seeds = self.session["finished"] + self.session["failed"]
                cpu = time.process_time() - self.cpu_started
                self.registry.set_meta(last_driver={"backend": "ray", "cpu_seconds": round(cpu, 4), "seeds": seeds})
        finally:
            with contextlib.suppress(Exception):
                self.ray.shutdown()

    def _plan(self, done: int) -> str:
        sweep = self.sweep
        asks = f"{sweep.cpus_per_seed} CPU" + (f" + {self.gpus_per_seed:g} GPU" if self.gpus_per_seed else "")
        return (
            f"sweep '{sweep.name}': {len(self.queue)} seeds to run ({done} already done) on {self.where}: "
            f"{self.nodes} node(s) can hold {self.capacity} seeds at once; running at most {self.jobs}, each with "
            f"{asks} and {self.threads} torch thread(s); runs in {sweep.dir}/"
            + ("" if self.where == LOCAL_INSTANCE else " (checked from every node)")
        )

    # -- the event loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        ray = self.ray
        for slot in range(min(self.jobs, len(self.queue))):
            self._start_worker(slot)
        while self.workers:
            if not self.queue:
                for slot in [w for w in self.workers if not w.ready]:
                    self._retire(slot)  # started for seeds that others took meanwhile
            waiting = {slot.ref: slot for slot in self.workers}
            if waiting:
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=0.5)
                for ref in done:
                    self._take(waiting[ref], ref)
            now = time.time()
            for slot in list(self.workers):
                if slot.seed is not None and self.sweep.timeout and now - slot.since > self.sweep.timeout:
                    self._timed_out(slot)
            self._show()
            self._fail_fast()

    def _start_worker(self, slot: int) -> None:
        log = self.sweep.dir / "logs" / f"actor{slot}.log"
        actor = self.actor_class.remote(
            self.environ, self.paths, os.getcwd(), self.threads, str(log), bool(self.gpus_per_seed)
        )
        self.workers.append(Slot(slot, actor, actor.ready.remote()))

    def _take(self, slot: Slot, ref) -> None:
        ray = self.ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            self._lost(slot, err)
            return
        except ray.exceptions.RayTaskError as err:  # run_task reports a seed's own errors; this is ours
            value = {"event": "result", "seed": slot.seed, "status": "failed", "error": str(err)[-4000:]}
        if not slot.ready:
            slot.ready, slot.info = True, value
            self.start_failures = 0
        else:
            self._record_result(value)
            slot.seed = None
        self._dispatch(slot)

    def _dispatch(self, slot: Slot) -> None:
        if not self.queue:
            self._retire(slot)
            return
        seed = self.queue.pop(0)
        found = self._completed_run(seed)
        if found is not None:  # it completed after all (an actor of a killed driver finishing it): taken as is
            self._adopt(seed, found)
            self._dispatch(slot)
            return
        info = slot.info
        self.registry.mark_running(seed, info["pid"], info["device"], info["host"], info["node_id"])
        slot.ref = slot.actor.run.remote(self._task(seed))
        slot.seed, slot.since = seed, time.time()
        self.session["first_dispatch"] = self.session["first_dispatch"] or slot.since

    def _retire(self, slot: Slot) -> None:
        self.workers.remove(slot)
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)

    def _node_gone(self, slot: Slot, err: Exception) -> bool:
        if "node has died" in str(err) or getattr(err, "preempted", False):
            return True
        node_id = slot.info.get("node_id")
        if node_id is None:
            return False

        def alive() -> bool:
            return node_id in {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}

        if isinstance(err, self.ray.exceptions.ActorUnavailableError):
            # The actor could not be reached: a node that died without a word (a crash, a power cut) is
            # declared dead by the GCS only after its health checks fail (~15 s by default); wait for that.
            deadline = time.time() + NODE_VERDICT_S
            while alive() and time.time() < deadline:
                time.sleep(0.5)
        return not alive()

    def _lost(self, slot: Slot, err: Exception) -> None:
        """The actor is gone. Its node left the cluster: the seed runs again elsewhere (its broken
        attempt marked interrupted). It crashed on a live node: the seed failed, as on the local pool.
        Either way it is killed first: an actor only out of reach must not go on with the seed."""
        self.workers.remove(slot)
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)
        node_gone = self._node_gone(slot, err)
        if slot.seed is not None:
            if node_gone:
                self._requeue(slot.seed, f"its {slot.where()} left the Ray cluster while it ran")
            else:
                tail = log_tail(self.sweep.dir / "logs" / f"seed{slot.seed}.log") or "(no output)"
                self._fail(
                    slot.seed,
                    f"its Ray actor on {slot.where()} died ({first_line(err)}): a crash or out of memory; last "
                    f"output:\n{tail}",
                )
        if not slot.ready and not node_gone:
            log = self.sweep.dir / "logs" / f"actor{slot.slot}.log"
            said = f"The last said:\n{str(err).strip()[-3000:]}\n{log_tail(log)}"
            self._start_failed("Ray actors in a row died", said, log)
        if self.queue:
            if not seed_nodes(self.ray, self.sweep.cpus_per_seed, self.gpus_per_seed):
                raise CnnlabError(
                    f"No node of {self.where} that can run a seed is left (live nodes: {describe_nodes(self.ray)}). "
                    "Add nodes and run the same command again: finished seeds are kept."
                )
            self._start_worker(slot.slot)

    def _requeue(self, seed: int, why: str) -> None:
        """A seed whose node died: adopted where its run had completed, else run again (at most
        MAX_NODE_LOSSES attempts lost this way), the broken attempt recorded as interrupted."""
        record = self.registry.get(seed)
        found = self._completed_run(seed)
        if found is not None:
            self._adopt(seed, found)
            return
        runs = [str(marked) for run in seed_runs(self.sweep.dir, seed) for marked in mark_interrupted(run, why)]
        record.history.append(
            {
                "attempt": record.attempts,
                "status": "interrupted",
                "node": record.node,
                "node_id": record.node_id,
                "error": why,
                "runs": runs,
                "ended": time.time(),
            }
        )
        if sum(1 for h in record.history if h.get("status") == "interrupted") >= MAX_NODE_LOSSES:
            self._store(record, {})
            self._fail(seed, f"{why}; its node was lost {MAX_NODE_LOSSES} times, so it is not run again")
            return
        self._store(record, {"status": "interrupted", "error": why, "finished": time.time()})
        self.queue.insert(0, seed)
        self.progress.close()
        self.say(f"seed {seed}: {why}; it runs again (attempt {record.attempts + 1}).")

    def _timed_out(self, slot: Slot) -> None:
        seed = slot.seed
        why = f"timed out after {self.sweep.timeout:g} s (--timeout); its Ray actor on {slot.where()} was replaced"
        self._stop_slots([slot], "failed", why)
        self._fail(seed, why)
        if self.queue:
            self._start_worker(slot.slot)

    def _stop_all(self, status: str, why: str) -> None:
        self._stop_slots(list(self.workers), status, why)

    def _stop_slots(self, slots: list[Slot], status: str, why: str) -> None:
        """Kill the actors, wait until Ray says they are gone (a killed actor writes nothing more),
        then mark their seeds `status` and their open runs interrupted."""
        try:
            for slot in slots:
                with contextlib.suppress(Exception):
                    self.ray.kill(slot.actor, no_restart=True)
            with contextlib.suppress(Exception):
                self.ray.wait([s.ref for s in slots], num_returns=len(slots), timeout=STOP_GRACE_S)
        except KeyboardInterrupt:  # a second Ctrl-C cuts the wait short, as on the local pool
            pass
        for slot in slots:
            if slot in self.workers:
                self.workers.remove(slot)
            if slot.seed is not None:
                self.registry.mark([slot.seed], status, why)
                for run in seed_runs(self.sweep.dir, slot.seed):
                    mark_interrupted(run, why)
                slot.seed = None


def first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
