"""cnnlab-seeds run --backend ray on a Ray cluster simulated on this machine (ray.cluster_utils.Cluster):
a head node that runs no seeds (the driver's machine) and worker nodes of one CPU each, the sweep folder
shared by all of them as on an NFS cluster. Seeds spread over the nodes with the local pool's metrics, a
node lost mid-seed, a killed driver, the storage check, and seeds that fail on their own."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='the Ray backend\'s tests need the ray extra: pip install -e ".[ray]"')

from conftest import ROOT, make_mnist, tiny_seed_overrides  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from test_seeds import CONFIGS, alive, launcher_process, records, wait_for  # noqa: E402

from cnnlab.code_version import git_commit  # noqa: E402
from cnnlab.seeds.command import main  # noqa: E402
from cnnlab.seeds.launcher import seed_runs  # noqa: E402
from cnnlab.seeds.registry import is_complete  # noqa: E402
from cnnlab.summary_files import read_summary  # noqa: E402

# Each node's plasma store: Ray's default is a share of RAM per node; the seeds pass nothing through it.
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
READONLY_NODE = Path(__file__).parent / "readonly_node"  # its sitecustomize.py makes a folder read-only


def ray_args(cluster: Cluster, root: Path, name: str, seeds: str, data: Path) -> list[str]:
    """`cnnlab-seeds run` of tiny seeds on `cluster`, one torch thread each."""
    args = ["run", *CONFIGS, f"--seeds={seeds}", f"--name={name}", f"--root={root}", "--figures=none", "--threads=1"]
    return [*args, "--backend=ray", f"--address={cluster.address}", *tiny_seed_overrides(data)]


def complete_runs(folder: Path, seed: int) -> list[str]:
    """The run directories of `seed` in the sweep folder whose fit finished and whose best checkpoint was tested."""
    return [str(run) for run in seed_runs(folder, seed) if is_complete(read_summary(run), seed)]


def poll(find, what: str, proc: subprocess.Popen):
    """Poll `find` until it returns something, and return that; fail if the launcher `proc` exits first."""
    found = []
    wait_for(lambda: found.append(find()) or found[-1], what, proc=proc)
    return found[-1]


def drive(args: list[str]) -> int:
    """A Ray driver in this process (`cnnlab-seeds` main). It asks git for the commit as a new process
    would: the answer is kept per process, and a commit made while the suite runs would otherwise fail
    the storage check's test that the nodes run the driver's cnnlab."""
    git_commit.cache_clear()
    return main(args)


def two_worker_nodes(cluster: Cluster) -> Cluster:
    """The shared cluster with (at least) two worker nodes, as a test that takes one away leaves it."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**NODE)
    return cluster


@pytest.fixture(scope="module")
def ray_cluster():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from the nodes or the drivers
        # A node that dies is declared dead after 3 failed health checks a second apart (Ray's default: 5, 3 s apart).
        checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "_system_config": checks})
        try:
            yield two_worker_nodes(cluster)
        finally:
            ray.shutdown()  # a driver left connected in this process (a failed test) would refuse the shutdown
            cluster.shutdown()


@pytest.fixture
def cluster(ray_cluster) -> Cluster:
    return two_worker_nodes(ray_cluster)


@pytest.fixture(scope="module")
def resumed(ray_cluster, mnist_root, tmp_path_factory):
    """Eight seeds on the two worker nodes; the driver SIGKILLed once each node has finished a seed and
    some seed runs, then the same command at once, to the end. Returns what the tests check."""
    cluster = two_worker_nodes(ray_cluster)
    root = tmp_path_factory.mktemp("ray")
    folder = root / "spread"
    args = ray_args(cluster, root, "spread", "0-7", mnist_root)

    def nodes_done_and_one_running() -> bool:
        seen = records(folder).values()
        finished_on = {r.node_id for r in seen if r.status == "finished"}
        return len(finished_on) >= 2 and any(r.status == "running" for r in seen)

    proc = launcher_process(args)
    try:
        wait_for(nodes_done_and_one_running, "a seed finished on each node while another runs", proc=proc)
    finally:
        proc.kill()  # SIGKILL: the driver records nothing more
        proc.wait()
    at_kill = records(folder)
    actors = {r.worker for r in at_kill.values() if r.worker}
    # no waiting for the killed driver's actors to go: the new driver must not race them
    code = drive(args)
    return {
        "folder": folder,
        "at_kill": at_kill,
        "actors": actors,
        "code": code,
        "final": records(folder),
        "workers": {node.node_id for node in cluster.worker_nodes},
    }


# -- refused before anything runs -----------------------------------------------------------------------


@pytest.mark.slow
def test_an_address_where_no_cluster_answers_is_one_paragraph(mnist_root, tmp_path):
    """Exit 2 with a paragraph naming the address, no traceback, no seed run."""
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["run", *CONFIGS, "--seeds=0-1", "--name=nowhere", f"--root={tmp_path}", "--backend=ray"]
    args += [f"--address=127.0.0.1:{port}", *tiny_seed_overrides(mnist_root)]
    # the guard only keeps a hanging driver from hanging the suite: the refusal takes a blink
    command = [sys.executable, "-m", "cnnlab.seeds", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr and "No seed ran" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "nowhere").glob("*-seed*"))
    assert {r.status for r in records(tmp_path / "nowhere").values()} <= {"pending"}


# -- a sweep on the cluster, its driver killed once ---------------------------------------------------------


@pytest.mark.slow
def test_seeds_spread_over_the_worker_nodes_and_say_where_they_ran(resumed):
    """Every seed finished; the registry names at least two worker nodes, and each seed's host and device."""
    final = resumed["final"]
    assert resumed["code"] == 0
    assert sorted(final) == list(range(8)) and all(r.status == "finished" for r in final.values())
    ran_on = {r.node_id for r in final.values()}
    assert len(ran_on) >= 2 and ran_on <= resumed["workers"]  # never the head, which has no CPU for seeds
    for record in final.values():
        assert (record.node, record.device) == (socket.gethostname(), "cpu")
        assert isinstance(record.worker, int)


@pytest.mark.slow
def test_metrics_equal_the_local_pools(resumed, mnist_root, tmp_path):
    """The same seeds on the local pool (2 workers, 1 torch thread each, as the actors ran): the same
    metrics to the last bit, the re-run seeds of the killed driver included."""
    args = ["run", *CONFIGS, "--seeds=0-7", "--name=local", f"--root={tmp_path}", "--figures=none", "--threads=1"]
    assert main([*args, "--jobs=2", *tiny_seed_overrides(mnist_root)]) == 0
    local = records(tmp_path / "local")
    assert {s: r.metrics for s, r in resumed["final"].items()} == {s: r.metrics for s, r in local.items()}
    assert all("test/acc" in r.metrics for r in local.values())


@pytest.mark.slow
def test_a_killed_driver_resumes_keeping_finished_seeds_and_running_none_twice(resumed):
    """The same command after a SIGKILL: exit 0, finished seeds kept as they were, one complete run per
    seed, no run left 'running', and none of the killed driver's actors still alive."""
    at_kill, final, folder = resumed["at_kill"], resumed["final"], resumed["folder"]
    assert resumed["code"] == 0 and all(r.status == "finished" for r in final.values())
    finished = [s for s, r in at_kill.items() if r.status == "finished"]
    assert finished and any(r.status == "running" for r in at_kill.values())  # the kill came mid-sweep
    for seed in finished:
        assert (final[seed].run_dir, final[seed].attempts) == (at_kill[seed].run_dir, at_kill[seed].attempts)
    # each seed once: the killed driver's actors did not finish a seed beside the new driver's run of it
    for seed, record in final.items():
        assert complete_runs(folder, seed) == [record.run_dir]
        assert all(read_summary(run).get("status") != "running" for run in seed_runs(folder, seed))
    assert not any(alive(pid) for pid in resumed["actors"])


# -- a node lost mid-seed ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bigger_mnist(tmp_path_factory) -> Path:
    """Enough training digits for a seed that takes seconds: time to take its node away mid-fit."""
    return make_mnist(tmp_path_factory.mktemp("mnist_big"), n_train=4100)


@pytest.mark.slow
@pytest.mark.parametrize("graceful", [True, False], ids=["leaves", "dies"])
def test_a_seed_whose_node_is_lost_runs_again_on_another(graceful, cluster, bigger_mnist, tmp_path):
    """Two seeds on two nodes; one node leaves the cluster (its raylet stops its workers and says so) or
    dies (all its processes killed at once, as in a crash: the GCS finds out by its health checks) while
    its seed fits, and a fresh node joins. The seed runs again elsewhere: one complete run per seed, the
    broken attempt in its history and its run marked interrupted."""
    folder = tmp_path / "lost"
    args = [*ray_args(cluster, tmp_path, "lost", "0-1", bigger_mnist), "--data.max_train_samples=4000"]

    def fitting():
        for seed, record in records(folder).items():
            runs = seed_runs(folder, seed)
            if record.status == "running" and runs and read_summary(runs[0]).get("status") == "running":
                return seed, record.node_id, runs[0]
        return None

    proc = launcher_process(args)
    try:
        seed, lost, first_run = poll(fitting, "a seed fitting", proc)
        node = next(node for node in cluster.worker_nodes if node.node_id == lost)
        cluster.remove_node(node, allow_graceful=graceful)
        cluster.add_node(**NODE)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert f"seed {seed}: its node" in err and "left the Ray cluster while it ran" in err
    final = records(folder)
    assert all(r.status == "finished" for r in final.values())
    for other, record in final.items():
        assert complete_runs(folder, other) == [record.run_dir]
        assert record.attempts == (2 if other == seed else 1)
    record = final[seed]
    assert record.node_id != lost
    (history,) = record.history
    assert (history["attempt"], history["status"], history["node_id"]) == (1, "interrupted", lost)
    assert history["runs"] == [str(first_run)]
    assert read_summary(first_run)["status"] == "interrupted"  # not 'running' for ever


# -- the storage check --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_node_that_cannot_write_the_sweep_folder_is_named_and_no_seed_runs(cluster, mnist_root, tmp_path, capsys):
    """A third node on which the sweep folder is read-only (EROFS on writes there, tests/readonly_node):
    one paragraph naming that node and the folder, exit 2, before any seed."""
    root = tmp_path.resolve()
    env = {"PYTHONPATH": str(READONLY_NODE), "CNNLAB_TEST_READONLY": str(root)}
    good = [node.node_id for node in cluster.worker_nodes]
    readonly = cluster.add_node(**NODE, env_vars=env)
    try:
        code = drive(ray_args(cluster, root, "readonly", "0-3", mnist_root))
    finally:
        cluster.remove_node(readonly)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert f"Ray node {readonly.node_id[:8]}) cannot write {root / 'readonly'}" in err
    assert "Read-only file system" in err and "No seed ran" in err and "Traceback" not in err
    assert not any(node[:8] in err for node in good)
    assert not list((root / "readonly").glob("*-seed*"))
    assert {r.status for r in records(root / "readonly").values()} == {"pending"}


# -- seeds that fail on their own -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(ray_cluster, mnist_root, tmp_path_factory):
    """Five seeds, one at a time (--jobs 1): seed 0 raises, seed 1 kills its actor's process, seed 2
    hangs past --timeout, seeds 3 and 4 are fine."""
    cluster = two_worker_nodes(ray_cluster)
    root = tmp_path_factory.mktemp("ray_faults")
    args = [*ray_args(cluster, root, "faulty", "0-4", mnist_root), "--jobs=1", "--timeout=15"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_TEST_FAULTS", "0:raise,1:crash,2:hang")  # forwarded to the actors, as CNNLAB_*
        code = drive([*args, "--trainer.callbacks+=seed_faults.SeedFaults"])
    return {"code": code, "final": records(root / "faulty")}


@pytest.mark.slow
def test_a_seed_that_raises_fails_once_and_its_actor_goes_on(faulty):
    """Failed after one attempt with its error; the same actor runs the next seed; the fine seeds finish."""
    final = faulty["final"]
    assert faulty["code"] == 1  # some seeds failed
    assert (final[0].status, final[0].attempts) == ("failed", 1)
    assert "injected fault: this seed raises" in final[0].error
    assert final[1].worker == final[0].worker  # the same warm actor took the next seed
    assert final[3].status == final[4].status == "finished"


@pytest.mark.slow
def test_a_seed_that_kills_its_actor_fails_and_a_new_actor_runs_the_next(faulty):
    """A crash on a live node is the seed's own failure, not a lost node: failed once, not run again."""
    final = faulty["final"]
    assert (final[1].status, final[1].attempts, final[1].history) == ("failed", 1, [])
    assert "Ray actor on node" in final[1].error and "a crash or out of memory" in final[1].error
    assert final[2].worker != final[1].worker and not alive(final[1].worker)


@pytest.mark.slow
def test_a_hung_seed_times_out_and_its_actor_is_replaced(faulty):
    """Failed with 'timed out'; its actor killed, a new one runs the seeds left."""
    final = faulty["final"]
    assert (final[2].status, final[2].attempts) == ("failed", 1)
    assert "timed out after 15 s (--timeout)" in final[2].error
    assert final[3].status == final[4].status == "finished"
    assert final[4].worker == final[3].worker != final[2].worker
    assert not alive(final[2].worker)  # the hung actor was killed, not left behind


@pytest.mark.slow
def test_relative_paths_mean_the_drivers_directory_on_every_node(cluster, mnist_root, tmp_path):
    """The nodes' Ray workers start where the cluster was started (the checkout, here); a seed still
    reads `--data.data_dir mnist` from the directory the driver runs in, as a local worker would."""
    here = tmp_path / "project"
    here.mkdir()
    (here / "mnist").symlink_to(mnist_root)
    args = [*ray_args(cluster, tmp_path / "runs", "relative", "0", mnist_root), "--data.data_dir=mnist"]
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab.seeds", *args], cwd=here, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records(tmp_path / "runs" / "relative").values()
    assert record.status == "finished" and "test/acc" in record.metrics
    assert read_summary(Path(record.run_dir))["config"]["data"]["init_args"]["data_dir"] == "mnist"
