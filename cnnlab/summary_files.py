"""The files of a run's records: reading and writing summary.json, one writer at a time. No torch here:
the seed launcher reads and marks records without importing it (cnnlab/records.py writes them)."""

import contextlib
import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from cnnlab.atomic import write_atomically
from cnnlab.errors import CnnlabError

SUMMARY = "summary.json"


def read_summary(directory: Path | str | None) -> dict:
    path = Path(directory or ".", SUMMARY)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def read_record(directory: Path) -> dict:
    """summary.json for a command that will write it or rely on it: one that exists but cannot be read
    (cut short, edited by hand) is refused, never taken for an empty record and written over."""
    path = Path(directory, SUMMARY)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise CnnlabError(
            f"The record {path} is not valid JSON (cut short, or edited by hand), so cnnlab will not write over it "
            "or trust it. Restore it (from a backup, or by fixing the JSON), or move it aside if the run's record is "
            "to be given up, and run the command again."
        ) from None


def write_summary(directory: Path, summary: dict) -> None:
    """Replace summary.json whole: a reader never sees half a file, and a write that fails (a full
    disk) leaves the record as it was, never cut short."""
    write_atomically(directory / SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str).encode())


@contextlib.contextmanager
def locked(directory: Path):
    """One writer of a directory's summary.json at a time (two evaluations of one run may end
    together). POSIX: an flock on the directory itself, so no lock file is left behind; Windows (no
    fcntl): an msvcrt lock on a lock file."""
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is not None:
        handle = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock
        return
    import msvcrt

    with open(directory / f".{SUMMARY}.lock", "a+b") as handle:
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:  # LK_LOCK gives up after 10 s; another writer holds it longer
                continue
        try:
            yield
        finally:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def update_summary(directory: Path, change) -> dict:
    """Read, change (a function of the dict, in place) and write summary.json under the lock. A record
    that exists but cannot be read (cut short, edited by hand) is refused, never written over with
    the change alone."""
    with locked(directory):
        summary = read_record(directory)
        change(summary)
        write_summary(directory, summary)
        return summary
