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
