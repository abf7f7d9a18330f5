"""The tensor operations every explicit-BPTT Function shares.

Every tensor is time-major with a leading direction axis: ``(D, T, B, X)`` for a whole layer,
``(D, B, X)`` for one step; the recurrent weights are stacked per direction, ``(D, G, H)``.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

from rnnkit import native


def stack(tensors) -> Optional[Tensor]:
    """The per-direction tensors stacked along a new leading axis D (None when they are None)."""
    return None if tensors[0] is None else torch.stack(tensors)


def sum_biases(w) -> Optional[Tensor]:
    """``b_ih + b_hh`` (None without bias): for gates where both biases are purely additive."""
    return None if w.bias_ih is None else w.bias_ih + w.bias_hh


def project(xs: Tensor, w_ih: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """``xs W_ih^T + bias`` for all steps: xs (D, T, B, F), w_ih (D, G, F), bias (D, G) -> (D, T, B, G).

    With ``out`` (D, T, B, G), contiguous within each direction: written there.
    """
    D, T, B, F_ = xs.shape
    flat, wt = xs.reshape(D, T * B, F_), w_ih.transpose(1, 2)
    res = None if out is None else out.view(D, T * B, -1)  # out=None: a new tensor, autograd-tracked
    res = torch.bmm(flat, wt, out=res) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, wt, out=res)
    return res.view(D, T, B, -1)


def masked(h: Tensor, mask: Optional[Tensor], out: Tensor) -> Tensor:
    """``h * mask`` into ``out`` (or ``h`` itself without a mask)."""
    return h if mask is None else torch.mul(h, mask, out=out)


def recurrent_inputs(hs: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``h_{t-1} * mask`` for every step, the input of the recurrent matmul: hs (D, T+1, B, H) -> (D, T, B, H)."""
    h_prev = hs[:, :-1]
    return h_prev if mask is None else h_prev * mask[:, None]


def weight_grad(dA: Tensor, inputs: Tensor) -> Tensor:
    """sum over t, b of dA^T inputs: dA (D, T, B, G), inputs (D, T, B, K) -> (D, G, K).

    Computed as ``(inputs^T dA)^T``: with the large gradient as the untransposed right operand
    the BLAS reads it in its storage order.
    """
    D, T, B, G = dA.shape
    return torch.bmm(inputs.reshape(D, T * B, -1).transpose(1, 2), dA.reshape(D, T * B, G)).transpose(1, 2)


def recurrent_grad(out: Tensor, da: Tensor, w: Tensor, mask, grad, tmp: Tensor) -> Tensor:
    """``out = grad + (da @ w) * mask`` (grad and mask optional): da (D, B, G), w (D, G, H) -> (D, B, H)."""
    if mask is None:
        return torch.bmm(da, w, out=out) if grad is None else torch.baddbmm(grad, da, w, out=out)
    torch.bmm(da, w, out=tmp)
    return torch.mul(tmp, mask, out=out) if grad is None else torch.addcmul(grad, tmp, mask, out=out)


def accumulate_recurrent(out: Tensor, da: Tensor, w: Tensor, mask, tmp: Tensor) -> Tensor:
    """``out += (da @ w) * mask`` in place: da (D, B, G), w (D, G, H), out (D, B, H)."""
    if mask is None:
        return out.baddbmm_(da, w)
    torch.bmm(da, w, out=tmp)
    return out.addcmul_(tmp, mask)


def final_grad(grad: Optional[Tensor], like: Tensor, shape: tuple) -> Tensor:
    """A contiguous copy of a final state's gradient ``shape`` (D, B, H), or zeros like ``like``
    when the state was not used."""
    return like.new_zeros(shape) if grad is None else grad.clone(memory_format=torch.contiguous_format)


def final_lstm_grads(grad_h: Optional[Tensor], grad_c: Optional[Tensor], gates: Tensor) -> tuple:
    """The gradients of an LSTM's final h and c, each (D, B, H) from ``gates`` (D, T, B, 4H)."""
    D, _, B, G = gates.shape
    return final_grad(grad_h, gates, (D, B, G // 4)), final_grad(grad_c, gates, (D, B, G // 4))


def optional_contiguous(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


def step_kernels(name: str, x: Tensor, mask: Optional[Tensor]) -> tuple:
    """The native per-step kernels ``name`` for ``x`` (None: the torch loop) and the mask as they
    read it (contiguous for the native kernels)."""
    kernels = native.kernels_for(name, x)
    return kernels, (mask if kernels is None else optional_contiguous(mask))


_WORKSPACES = threading.local()


def workspace(like: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``like``, reused across backward calls of this thread.

    Why: on CPU a fresh buffer above glibc's mmap threshold (32 MiB) is new pages every call,
    and faulting them in costs about as much as two passes over the data. The gradient of the
    pre-activations lives only during one backward call, and backward calls of one thread run
    one at a time, so one buffer (the largest needed so far, per device and dtype) serves them all.
    """
    key = (like.device, like.dtype)
    cache = getattr(_WORKSPACES, "buffers", None)
    if cache is None:
        cache = _WORKSPACES.buffers = {}
    buf = cache.get(key)
    if buf is None or buf.numel() < like.numel():
        buf = cache[key] = like.new_empty(like.numel())
    return buf[: like.numel()].view(like.shape)
