"""A read-only mount, simulated for tests/test_seeds_ray.py: imported at startup by every Python process
of a Ray node started with PYTHONPATH=<this folder>, it refuses writes under CNNLAB_TEST_READONLY with
EROFS, as a file system mounted read-only there would. Reads are untouched."""

import errno
import os
import sys

READONLY_ENV = "CNNLAB_TEST_READONLY"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# audit events that change a path (the first argument; os.rename's second is checked too)
CHANGES = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.chmod",
    "os.chown",
    "os.utime",
    "os.mkfifo",
    "os.mknod",
    "os.removexattr",
    "os.setxattr",
    "shutil.copyfile",
    "shutil.rmtree",
}


def _under(path, root: str) -> bool:
    if isinstance(path, int) or path is None:
        return False  # an open file descriptor: its open() was checked
    try:
        path = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return path == root or path.startswith(root + os.sep)


def _refuse(path) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))


def _install(root: str) -> None:
    root = os.path.abspath(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writes and _under(path, root):
                _refuse(path)
        elif event in CHANGES:
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile") else args[:1]:
                if _under(path, root):
                    _refuse(path)

    sys.addaudithook(hook)


if os.environ.get(READONLY_ENV):
    _install(os.environ[READONLY_ENV])
