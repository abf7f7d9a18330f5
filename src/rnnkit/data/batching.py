"""The batch every job hands to the trainer; nothing task-specific lives here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Batch:
    """One training/evaluation batch.

    inputs: (B, T) int64 token ids, or (B, T, F) floats.
    targets: whatever the task's loss reads: (B, T) next tokens, (B,) class ids, (B, K, C) values.
    lengths: (B,) valid steps per sequence (None: all T steps are valid).
    carries_state: True for consecutive chunks of B contiguous streams (truncated BPTT): the
        trainer passes the previous batch's final state, detached, into this one.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Optional[Tensor] = None
    carries_state: bool = False

    def to(self, device) -> "Batch":
        return replace(
            self,
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            lengths=self.lengths,  # lengths stay on the CPU (pack_padded_sequence wants them there)
        )

    @property
    def size(self) -> int:
        return self.inputs.shape[0]

    @property
    def num_tokens(self) -> int:
        """Valid input steps in the batch (for tokens/s)."""
        if self.lengths is None:
            return self.inputs.shape[0] * self.inputs.shape[1]
        return int(self.lengths.sum())


def pad_sequences(seqs: list, pad_value=0, dtype=torch.int64) -> tuple[Tensor, Tensor]:
    """Right-pad a list of 1-D (or (T_i, F)) sequences into (B, T_max, ...) plus lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    tensors = [torch.as_tensor(s, dtype=dtype) for s in seqs]
    out = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_value)
    return out, lengths


def batch_lengths(batch: Batch) -> torch.Tensor:
    """(B,) valid steps of each row of ``batch``: its lengths, or T for every row."""
    if batch.lengths is not None:
        return batch.lengths
    return torch.full((batch.inputs.shape[0],), batch.inputs.shape[1], dtype=torch.int64)


class BucketedBatches:
    """A reproducible ``BatchSource`` whose batches hold items of similar length.

    Each epoch shuffles the items with a generator seeded by ``(seed, epoch)``, cuts them into
    pools of ``pool * batch_size`` items, sorts each pool by length, slices it into batches and
    shuffles the batch order: little padding (the recurrent loop runs ``max(lengths)`` steps) yet
    a different mix every epoch. ``shuffle=False`` (evaluation) sorts all items by length.
    ``make_batch(indices) -> Batch`` builds one batch from item indices.
    """

    def __init__(self, lengths, batch_size: int, make_batch, shuffle: bool = True, pool: int = 50):
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        self.batch_size, self.make_batch, self.shuffle, self.pool = batch_size, make_batch, shuffle, pool

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batch_indices(self, epoch: int, seed: int) -> list:
        """The item indices of every batch of ``epoch``, in order."""
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True)
            return [order[i : i + bs] for i in range(0, n, bs)]
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        batches = []
        for start in range(0, n, self.pool * bs):
            chunk = order[start : start + self.pool * bs]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def epoch(self, epoch: int, seed: int):
        for idx in self.batch_indices(epoch, seed):
            yield self.make_batch(idx.tolist())
