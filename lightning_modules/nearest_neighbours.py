"""The k-NN anomaly score: how far a sample's code lies from its k nearest codes of the normal
training set (Bergman, Cohen & Hoshen 2020, "Deep Nearest Neighbor Anomaly Detection"). A sample
like many normal ones lies close to some of them even where a single Gaussian over all codes is a
poor fit (several writing styles of one digit make several clusters).

The bank of normal codes is refitted at each validation during fit, from the weights being
validated, and travels in the checkpoint (extra state), so `test` and `predict` score against the
bank of the weights they load, with no training data at hand."""

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

Metric = Literal["euclidean", "cosine"]


class NearestNeighbours(nn.Module):
    """A bank of normal codes [N, D] and the mean distance of a code to its k nearest in it.

    Args:
        k: Neighbours averaged (1 is the nearest alone; 5 is steadier, Bergman et al. use 2-5).
        metric: euclidean (distances in code space) or cosine (1 - cosine similarity: only the
            direction counts, what suits features after a ReLU and global pooling).
        max_bank: Codes kept at most: a random subset (fixed generator) of a larger training set,
            so a non-anomaly run over 45,000 images scores in bounded time.
    """

    def __init__(self, k: int = 5, metric: Metric = "euclidean", max_bank: int = 20000) -> None:
        super().__init__()
        if k < 1 or max_bank < k:
            raise CnnlabError(
                f"k-NN score: knn_k is {k} and the bank holds at most {max_bank} codes, but k must be at least 1 "
                "and the bank at least k codes. Use e.g. knn_k 5."
            )
        if metric not in ("euclidean", "cosine"):
            raise CnnlabError(f"k-NN score: knn_metric is {metric!r}; use 'euclidean' or 'cosine'.")
        self.k, self.metric, self.max_bank = k, metric, max_bank
        self.bank = torch.zeros(0, 0)

    @property
    def fitted(self) -> bool:
        return len(self.bank) >= self.k

    def bank_indices(self, n: int) -> torch.Tensor:
        """Which of n training samples the bank keeps: all, or `max_bank` of them drawn with a fixed
        generator (the same on every rank and in every epoch)."""
        if n <= self.max_bank:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))[: self.max_bank].sort().values

    @torch.no_grad()
    def fit(self, codes: Iterable[torch.Tensor] | torch.Tensor) -> None:
        """Replace the bank with these codes (of the samples `bank_indices` chose), float32."""
        codes = codes if isinstance(codes, torch.Tensor) else torch.cat(list(codes))
        self.bank = self._prepare(codes.detach().float())

    def _prepare(self, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(codes, dim=1) if self.metric == "cosine" else codes

    @torch.no_grad()
    def distance(self, codes: torch.Tensor, chunk: int = 1024, exclude_self: bool = False) -> torch.Tensor:
        """Mean distance of each code [B, D] to its k nearest bank codes, float32 [B] (in chunks, so
        memory stays at chunk x N). `exclude_self`: the codes are of samples in the bank, and each
        one's own match (its nearest, at distance 0) is dropped, so the distance is to k others, what
        an unseen sample would get; a bank of k codes leaves k - 1."""
        if self.bank.device != codes.device:  # once: the bank is extra state, which Module.to leaves behind
            self.bank = self.bank.to(codes.device)
        bank = self.bank
        nearest = min(self.k + 1, len(bank)) if exclude_self else self.k
        if exclude_self and nearest < 2:
            raise CnnlabError(
                f"k-NN score: a bank of {len(bank)} code(s) has no other code to measure a bank sample against once "
                "its own match is left out. Train on more than one normal image."
            )
        out = []
        for part in self._prepare(codes.detach().float()).split(chunk):
            if self.metric == "cosine":
                d = (1 - part @ bank.T).clamp_min(0)
            else:
                d = torch.cdist(part, bank, compute_mode="donot_use_mm_for_euclid_dist")
            d = d.topk(nearest, dim=1, largest=False).values  # sorted, nearest first
            out.append((d[:, 1:] if exclude_self else d).mean(1))
        return torch.cat(out) if out else codes.new_zeros(0, dtype=torch.float32)

    def get_extra_state(self) -> dict:
        return {"bank": self.bank.cpu(), "k": self.k, "metric": self.metric}

    def set_extra_state(self, state: dict) -> None:
        bank = (state or {}).get("bank")
        self.bank = bank.float() if bank is not None else torch.zeros(0, 0)
