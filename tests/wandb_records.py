"""A reader of wandb's offline run files (`offline-run-*/run-<id>.wandb`), for tests that check what
reached W&B without a server. wandb ships no reader since wandb-core took over (0.2x dropped
`wandb/sdk/internal/datastore.py`); the format is still that module's: a 7-byte file header
(":W&B", magic 0xBEE1 little-endian, version 0), then LevelDB's log framing in 32 KiB blocks, each
record a 7-byte header (CRC-32 seeded with the record type, length, type: FULL/FIRST/MIDDLE/LAST)
before its bytes, a block's tail shorter than a header left as zeros. The payloads are
`wandb_internal_pb2.Record` messages.
"""

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
SEED = {kind: zlib.crc32(bytes([kind])) for kind in (FULL, FIRST, MIDDLE, LAST)}


def payloads(path: Path) -> list[bytes]:
    """The records of one .wandb file as bytes, each checked against its CRC."""
    data = Path(path).read_bytes()
    if data[:HEADER] != FILE_HEADER:
        raise ValueError(f"{path}: not a wandb transaction log (header {data[:HEADER]!r})")
    found, pending, at = [], None, HEADER
    while at + HEADER <= len(data):
        if BLOCK - at % BLOCK < HEADER:  # a block's tail too short for a header: padding
            at += BLOCK - at % BLOCK
            continue
        checksum, length, kind = struct.unpack("<IHB", data[at : at + HEADER])
        if kind == 0 and length == 0:  # zeros: the end of what was written
            break
        body = data[at + HEADER : at + HEADER + length]
        if zlib.crc32(body, SEED[kind]) != checksum:
            raise ValueError(f"{path}: record at byte {at} fails its CRC")
        at += HEADER + length
        if kind == FULL:
            found.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        else:
            found.append(pending + body)
            pending = None
    return found


def records(path: Path) -> list:
    """The `Record` protobuf messages of one .wandb file, in the order written."""
    from wandb.proto import wandb_internal_pb2

    parsed = []
    for body in payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(body)
        parsed.append(record)
    return parsed


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What one offline run directory holds: its RunRecord, history rows, final summary, config, artifacts."""

    directory: Path
    run: object = None
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)
    exit_code: int | None = None

    @property
    def id(self) -> str:
        return self.run.run_id

    def metrics(self) -> set[str]:
        """Every key logged to history or set in the summary (wandb's own `_step` etc. left out)."""
        keys = set(self.summary) | {k for row in self.history for k in row}
        return {k for k in keys if not k.startswith("_")}


def read_run(directory: Path) -> OfflineRun:
    """One `offline-run-*` directory, read back."""
    (path,) = Path(directory).glob("run-*.wandb")
    run = OfflineRun(Path(directory))
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            run.config |= {_key(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary |= {_key(i): json.loads(i.value_json) for i in record.summary.update}
        elif kind == "config":
            run.config |= {_key(i): json.loads(i.value_json) for i in record.config.update}
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run directory under `root`, at any depth, oldest first (wandb's own order)."""
    return [read_run(d) for d in sorted(Path(root).rglob("offline-run-*"), key=lambda d: d.name) if d.is_dir()]
