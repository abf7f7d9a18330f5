"""Fast CPU training path: explicit back-propagation through time, one autograd Function per cell.

torch has a fast fused kernel only for dense-input LSTM on CPU (oneDNN); ``nn.GRU`` and
``nn.RNN`` run a generic loop whose backward is an autograd graph of many small per-step
nodes, and the reference loop of :mod:`rnnkit.recurrent` is the same kind of graph. Here each
cell kind has a ``torch.autograd.Function`` whose

* forward loop runs only the recurrent part (the input projection ``xp = x W_ih^T + b_ih`` is
  one matmul for all steps, outside) and writes the activations it will need into
  preallocated buffers (``out=`` and in-place ops, no per-step allocation);
* backward loop runs only the recurrence ``dh_{t-1} = dL/dh_{t-1}|_out + (dh_t-dependent terms)
  W_hh``; every factor that does not depend on ``dh`` (activation derivatives, products of
  gates) is computed for all steps at once before the loop;
* weight gradients are one large matmul over all steps after the loop:
  ``dW_hh = sum_t da_t^T (h_{t-1} * mask) = dA^T Hm`` with ``dA`` (T*B, G*H);
* both directions of a bidirectional layer run together: every tensor carries a leading
  direction axis D, recurrent matmuls are ``torch.baddbmm`` over stacked ``(D, ...)`` weights.

Equations are those of :mod:`rnnkit.cells`, including the variational recurrent-dropout mask
``m`` (D, B, H) on ``h_{t-1}`` where it enters the recurrent projection. Values and gradients
equal the reference loop (tests/test_bptt.py). Where ``b_ih`` and ``b_hh`` are both purely
additive (all but GRU's ``b_hn``) they are summed once and added in the input projection.

Modules: :mod:`~rnnkit.bptt.driver` (``bptt_forward``: the stack and directions;
``bptt_unsupported_reason``), one per cell (:mod:`~rnnkit.bptt.rnn`, :mod:`~rnnkit.bptt.gru`,
:mod:`~rnnkit.bptt.gru_norm`, :mod:`~rnnkit.bptt.lstm`, :mod:`~rnnkit.bptt.lstm_norm`), and
what they share (:mod:`~rnnkit.bptt.ops`, :mod:`~rnnkit.bptt.norm`).

Not handled here (``bptt_unsupported_reason`` says so and the layer falls back to the fused
kernel or the reference loop): variable ``lengths``; ``layer_norm`` for the Elman RNN and the
reset_after=False GRU; a layer-normed GRU without the native kernels.

Which implementation runs, with the LSTM as the example (RNN and GRU have the same paths,
except that their sampling step is always torch's cell kernel, and the layer-normed GRU has no
torch-ops loop). Each is a different path, not a copy: the reference defines the numbers, and
every other path is tested against it (tests/test_fused.py, test_bptt.py, test_native.py,
test_textgen.py).

* reference cell -- ``cells.lstm_step`` in ``Recurrent.reference_forward``'s loop: the
  specification; runs where no faster path can serve (e.g. layer norm with ``lengths``).
* fused torch kernel -- :mod:`rnnkit.fused` (oneDNN on CPU, cuDNN on GPU): always on a GPU;
  on CPU where ``dispatch.prefers_fused`` says so (inference, bfloat16 autocast, wide LSTMs)
  or where explicit BPTT cannot serve (``lengths``).
* explicit BPTT -- this package (:mod:`~rnnkit.bptt.lstm`, :mod:`~rnnkit.bptt.lstm_norm`):
  CPU training where it beats the fused kernel or where that cannot serve (recurrent dropout,
  layer norm). Its loops run one of three ways, all the same numbers:

  - native sequence kernel (``native.lstm_sequence_*``): the whole layer in one C call each
    way, for layers up to ``dispatch.PATHS.sequence_kernel_max_hidden`` units;
  - native step kernel (``native.LSTMSteps``): a BLAS matmul a step, then one C call for the
    element-wise rest; wider layers;
  - torch ops (each module's ``_forward_loop``/``_backward_loop``): the same arithmetic when
    the native kernels are unavailable (no C compiler, ``RNNKIT_NATIVE=0``); the native
    kernels are tested against it.
* sampling step -- ``tasks.textgen._Stepper``: generation, one token a step; the native step
  kernel on joined ``[W_ih | W_hh]`` weights, or ``torch.lstm_cell`` without the native kernels.

Every rnnkit kernel reads the LSTM weights in one layout, defined in :mod:`rnnkit.layout`.
"""

from rnnkit.bptt.driver import bptt_forward, bptt_unsupported_reason

__all__ = ["bptt_forward", "bptt_unsupported_reason"]
