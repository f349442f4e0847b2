"""Files that another process may read while they are written (a record, a checkpoint) are written
whole or not at all: into a temporary file in the same directory (a rename across filesystems is a
copy, which a reader can see half done), flushed to disk, then renamed over the old one. A write that
fails (a full disk) removes its temporary file and leaves the old file as it was."""

import contextlib
import errno
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
