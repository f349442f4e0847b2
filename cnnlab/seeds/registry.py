"""The results registry of one sweep: an SQLite file beside its runs, `<root>/<sweep>/registry.sqlite`,
one row per seed (status, metrics, run directory, W&B run id, duration, error) plus the sweep's
identity. SQLite in WAL mode: a report can read while the launcher writes, and a killed writer
leaves the last committed state, never a half-written line.
"""

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cnnlab.errors import CnnlabError

REGISTRY = "registry.sqlite"
STATUSES = ("pending", "running", "finished", "failed", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seeds (
    seed INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT,
    wandb_id TEXT,
    seconds REAL,
    error TEXT,
    started REAL,
    finished REAL,
    details TEXT NOT NULL DEFAULT '{}'
);
"""
COLUMNS = ("seed", "status", "attempts", "metrics", "run_dir", "wandb_id", "seconds", "error", "started", "finished")


@dataclass
class SeedRecord:
    """One seed of a sweep. `seconds` is the worker's wall time for fit + test of the seed;
    `fit_seconds`/`test_seconds` the part inside each Lightning run (from summary.json)."""

    seed: int
    status: str = "pending"
    attempts: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str | None = None
    wandb_id: str | None = None
    seconds: float | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    # details: kept in one JSON column, they matter to reports but nobody queries by them
    best_checkpoint: str | None = None
    monitor: str | None = None
    mode: str | None = None
    best_score: float | None = None
    data_seed: int | None = None
    git_commit: str | None = None
    wandb_project: str | None = None
    fit_seconds: float | None = None
    test_seconds: float | None = None
    worker: int | None = None  # the pid of the process that ran it (local worker or Ray actor)
    device: str | None = None  # "cpu" or the GPU ids it saw, e.g. "GPU 0"
    node: str | None = None  # the host it ran on
    node_id: str | None = None  # the Ray node's id (--backend ray), None for the local pool
    # attempts that ended without a result of their own (a Ray node that died mid-seed): one dict each
    history: list[dict] = field(default_factory=list)


DETAILS = tuple(f.name for f in fields(SeedRecord) if f.name not in COLUMNS)


class Registry:
    """Open (creating if needed) the registry of the sweep whose directory is `sweep_dir`."""

    def __init__(self, sweep_dir: Path | str, create: bool = True) -> None:
        self.path = Path(sweep_dir) / REGISTRY
        if not create and not self.path.is_file():
            raise CnnlabError(
                f"No seed sweep registry at {self.path}. Run the sweep first (cnnlab-seeds run --config ... "
                f"--name {Path(sweep_dir).name}), or point --root at the folder that holds the sweep's directory."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: explicit transactions only, each write commits on its own.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the sweep's identity --------------------------------------------------------------

    def meta(self) -> dict:
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        with self._transaction():
            for key, value in values.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- seeds -------------------------------------------------------------------------------

    def records(self) -> list[SeedRecord]:
        rows = self.db.execute(f"SELECT {', '.join(COLUMNS)}, details FROM seeds ORDER BY seed").fetchall()
        return [self._record(row) for row in rows]

    def get(self, seed: int) -> SeedRecord | None:
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)}, details FROM seeds WHERE seed = ?", (seed,)).fetchone()
        return None if row is None else self._record(row)

    def add_pending(self, seeds: list[int]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO seeds (seed, status) VALUES (?, 'pending')", [(s,) for s in seeds]
            )

    def mark_running(
        self, seed: int, worker: int | None, device: str | None, node: str | None = None, node_id: str | None = None
    ) -> None:
        record = self.get(seed) or SeedRecord(seed)
        record.status, record.attempts, record.started = "running", record.attempts + 1, time.time()
        record.finished = record.seconds = record.error = None
        record.worker, record.device, record.node, record.node_id = worker, device, node, node_id
        self.put(record)

    def mark(self, seeds: list[int], status: str, error: str | None = None) -> None:
        for seed in seeds:
            record = self.get(seed) or SeedRecord(seed)
            record.status, record.error, record.finished = status, error, time.time()
            self.put(record)

    def put(self, record: SeedRecord) -> None:
        if record.status not in STATUSES:
            raise ValueError(f"unknown seed status {record.status!r}")
        values = asdict(record)
        row = [json.dumps(values[c]) if c == "metrics" else values[c] for c in COLUMNS]
        details = json.dumps({k: values[k] for k in DETAILS})
        marks = ", ".join("?" * (len(COLUMNS) + 1))
        with self._transaction():
            self.db.execute(
                f"INSERT OR REPLACE INTO seeds ({', '.join(COLUMNS)}, details) VALUES ({marks})", (*row, details)
            )

    def counts(self, seeds: list[int] | None = None) -> dict[str, int]:
        """How many seeds have each status: all of them, or those of `seeds` (an invocation's range)."""
        counts = dict.fromkeys(STATUSES, 0)
        wanted = None if seeds is None else set(seeds)
        for seed, status in self.db.execute("SELECT seed, status FROM seeds"):
            if wanted is None or seed in wanted:
                counts[status] += 1
        return counts

    # -- helpers -----------------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self.db)

    @staticmethod
    def _record(row) -> SeedRecord:
        values = dict(zip(COLUMNS, row[:-1], strict=True))
        values["metrics"] = json.loads(values["metrics"] or "{}")
        details = json.loads(row[-1] or "{}")
        details["history"] = details.get("history") or []
        return SeedRecord(**values, **{k: details.get(k) for k in DETAILS})


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so two writers queue instead of
    failing halfway (sqlite3's own context manager begins lazily)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def evaluation_of_best(summary: dict) -> dict | None:
    """The latest finished test of the run's best checkpoint among its evaluations."""
    best = summary.get("best_checkpoint") or summary.get("last_checkpoint")
    tests = [
        e
        for e in summary.get("evaluations") or []
        if e.get("subcommand") == "test"
        and e.get("status") == "finished"
        and (e.get("checkpoint") or {}).get("path") == best
    ]
    return tests[-1] if tests else None


def outcome_of(summary: dict) -> dict:
    """The fields of a SeedRecord that a run's summary.json knows (run by the worker or found on
    disk when resuming after a killed launcher): the fit's metrics and those of the test of its best
    checkpoint."""
    wandb = summary.get("wandb") or {}
    test = evaluation_of_best(summary) or {}
    return {
        "metrics": {**(summary.get("metrics") or {}), **(test.get("metrics") or {})},
        "run_dir": summary.get("run_dir"),
        "best_checkpoint": summary.get("best_checkpoint"),
        "monitor": summary.get("monitor"),
        "mode": summary.get("mode"),
        "best_score": summary.get("best_score"),
        "data_seed": summary.get("data_seed"),
        "git_commit": summary.get("git_commit"),
        "wandb_id": wandb.get("id"),
        "wandb_project": wandb.get("project"),
        "fit_seconds": summary.get("fit_seconds"),
        "test_seconds": test.get("seconds"),
    }


def is_complete(summary: dict, seed: int) -> bool:
    """A seed's run is complete once fit finished and its best checkpoint was tested."""
    test = evaluation_of_best(summary)
    return (
        summary.get("seed") == seed
        and summary.get("status") == "finished"
        and test is not None
        and any(key.startswith("test/") for key in test.get("metrics") or {})
    )
