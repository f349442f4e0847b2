"""Checkpoints written atomically, with their SHA-256 kept for the run's record.

Lightning's own `TorchCheckpointIO` writes a local checkpoint through fsspec's transaction: to a
temporary file elsewhere, then moved, which across filesystems is a copy. A full disk or a kill during
that copy left a truncated `last.ckpt` in place, and the resume advice pointed at it. Here the bytes
go to a temporary file beside the checkpoint and are renamed into place (cnnlab/atomic.py), so a
checkpoint file is always one whole save; remote paths (`s3://...`) keep Lightning's way.
"""

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from cnnlab.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """`digests` maps each checkpoint path this process wrote to the SHA-256 of the bytes written, so
    the run's record can name, for best and last, a file that verifies."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[str, str] = {}

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        self.digests[str(path.resolve())] = hashlib.sha256(data).hexdigest()

    @override
    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        self.digests.pop(str(Path(path).resolve()), None)
