"""Every rank's share of a tensor concatenated in rank order, for whole-split figures and reference
scores under DDP: torchmetrics' gather_all_tensors, which pads and trims shares of uneven length."""

import torch
import torch.distributed as dist
from torchmetrics.utilities.distributed import gather_all_tensors


def gather_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """[n_r, ...] of every rank -> [sum n_r, ...]; the tensor itself outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(gather_all_tensors(tensor.contiguous()))
