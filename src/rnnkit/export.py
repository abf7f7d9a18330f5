"""Export a run directory's model to ONNX, with its preprocessing beside it as JSON.

``export_onnx(DIR, out=None) -> (model.onnx, model.json)``; CLI ``rnnkit export DIR --format onnx``.

The graph is the model's ``forward`` with the recurrent state as explicit inputs and outputs,
so a runtime can run whole sequences or one step at a time (feed ``hn``/``cn`` back in)::

    inputs   (B, T) int64 token ids | (B, T, K) int64 (word + bigram ids) | (B, T, F) float32
    lengths  (B,) int64, valid steps per row (textclass, seqclass only; 1 <= lengths <= T)
    h0       (L*D, B', H) float32 initial hidden state (zeros to start); c0 likewise for LSTM
    ->
    outputs  the model's outputs: (B, T, V) textgen logits, (B, C) class logits,
             (B, K, C) or (B, L, K', C) scaled forecasts (see ``spec`` in the JSON)
    hn [, cn] the final state, same shapes as h0 [, c0]

B and T are dynamic axes (B' = B x channels for channel-independent forecasters). The SegRNN
forecaster has no state inputs and a fixed look-back T (its segments are fixed at training).

An ensemble (``rnnkit ensemble``) exports its averaging graph: member m's state is ``h0_m``
[, ``c0_m``] -> ``hn_m`` [, ``cn_m``], and ``outputs`` are the members' outputs averaged with
the ensemble's weights (log of the mean probabilities; the mean forecast).

Recurrent layers are exported through torch's fused kernels (``force_path="fused"``), which
the TorchScript-based exporter maps to ONNX's own LSTM/GRU/RNN operators (dynamic T, and
``sequence_lens`` for lengths). Configurations those kernels do not compute (layer norm, GRU
with ``reset_after=False``) are refused with the reason. The JSON holds everything needed
before and after the graph: the task state (vocabulary, scaler, labels, normaliser, windows),
the configs, and the names/shapes/dtypes of every input and output.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from rnnkit import artifacts
from rnnkit.runs import open_run
from rnnkit.tasks.artifact import Artifact
from rnnkit.version import __version__
from rnnkit.errors import UserError
from rnnkit.recurrent import Recurrent

FORMAT = "rnnkit-onnx"
FORMAT_VERSION = 1
USES_LENGTHS = ("textclass", "seqclass")


def recurrent_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, Recurrent)]


def pin_fused(model: nn.Module, where: str) -> None:
    """Route every Recurrent through torch's fused kernel (the exportable path) or refuse."""
    from rnnkit.fused import fused_unsupported_reason

    for layer in recurrent_layers(model):
        probe = torch.zeros(1, 1, layer.input_size)
        reason = fused_unsupported_reason(layer, probe)
        if reason is not None:
            raise UserError(f"{where}: cannot export to ONNX: {reason} (ONNX's LSTM/GRU/RNN operators "
                            f"compute what torch's fused kernels compute)")
        layer.force_path = "fused"


def state_layers(model: nn.Module) -> list:
    """The Recurrent whose state each network carries (None: a stateless network): one entry for a
    single network, one per member for an ensemble (``model.members``, whose state is the list of
    the members' states)."""
    return [_state_layer(net) for net in getattr(model, "members", [model])]


def _state_layer(model: nn.Module) -> Optional[Recurrent]:
    """The Recurrent whose state is the network's state (None: it keeps no state)."""
    net = getattr(model, "net", model)  # ForecastModel wraps a SequenceModel or a SegRNN
    return None if type(net).__name__ == "SegRNN" else net.rnn


class StatefulGraph(nn.Module):
    """``forward(inputs, [lengths], *states) -> (outputs, *new states)`` around a model that follows
    rnnkit's ``model(inputs, state, lengths) -> (outputs, state)`` convention.

    ``layers`` (:func:`state_layers`): per network its Recurrent or None; each stateful network
    adds ``h`` (and ``c`` for an LSTM), in order, to the graph's inputs and outputs. An ensemble
    (``ensemble=True``) takes its state as the list of the members' states. Without any state the
    graph is ``forward(inputs, [lengths]) -> outputs``.
    """

    def __init__(self, model: nn.Module, lengths: bool, layers: list, ensemble: bool = False):
        super().__init__()
        self.model, self.lengths, self.ensemble = model, lengths, ensemble
        self.parts = [0 if layer is None else 2 if layer.cell == "lstm" else 1 for layer in layers]

    def forward(self, *args: Tensor):
        x, rest = args[0], list(args[1:])
        lengths = rest.pop(0) if self.lengths else None
        states = []
        for n in self.parts:  # rest: every stateful network's (h[, c]), network by network
            states.append(None if n == 0 else rest[0] if n == 1 else (rest[0], rest[1]))
            rest = rest[n:]
        state = states if self.ensemble else states[0]
        y, state = self.model(x, None if not any(self.parts) else state, lengths)
        new = [p for s in (state if self.ensemble else [state]) if s is not None
               for p in (s if isinstance(s, tuple) else (s,))]
        return (y, *new) if new else y


def example_inputs(art: Artifact, model: nn.Module, B: int, T: int) -> Tensor:
    """A (B, T, ...) input of the right dtype and trailing shape for the artifact's model."""
    mc, state = art.model_config, art.task_state
    if art.task == "forecast":
        spec = state["spec"]
        T = spec["lookback"] if spec["architecture"] == "segrnn" else T
        return torch.randn(B, T, spec["inputs"])
    if mc.encoder == "embedding":
        V = mc.input_size
        if art.task == "textclass" and state.get("ngram_buckets"):
            return torch.randint(0, V, (B, T, 2))
        return torch.randint(0, V, (B, T))
    return torch.randn(B, T, mc.input_size)


def signature(art: Artifact, model: nn.Module, layers: list) -> dict:
    """Input/output names, example tensors and dynamic axes of the graph; ``layers`` as in
    :func:`state_layers`. A single network's state is ``h0``/``c0`` -> ``hn``/``cn``, ensemble
    member m's ``h0_m``/``c0_m`` -> ``hn_m``/``cn_m``."""
    B, T = 2, 5
    x = example_inputs(art, model, B, T)
    names, args = ["inputs"], [x]
    axes = {"inputs": {0: "batch", 1: "time"}}
    if art.task == "forecast" and art.task_state["spec"]["architecture"] == "segrnn":
        axes["inputs"] = {0: "batch"}
    if art.task in USES_LENGTHS:
        names.append("lengths")
        args.append(torch.tensor([T, max(1, T - 2)], dtype=torch.int64))
        axes["lengths"] = {0: "batch"}
    outputs = ["outputs"]
    spec = art.task_state.get("spec", {})
    per_step = art.task == "textgen" or (spec.get("architecture") == "rnn" and spec.get("dense_targets"))
    axes["outputs"] = {0: "batch", 1: "time"} if per_step else {0: "batch"}
    if any(layer is not None for layer in layers):
        with torch.no_grad():
            _, state = model(x, None, args[1] if len(args) > 1 else None)
        ensemble = hasattr(model, "members")
        for m, member_state in enumerate(state if ensemble else [state]):
            parts = () if member_state is None else member_state if isinstance(member_state, tuple) else (member_state,)
            for i, p in enumerate(parts):
                suffix = f"_{m}" if ensemble else ""
                name, out = ("h0", "hn") if i == 0 else ("c0", "cn")
                names.append(name + suffix)
                args.append(torch.zeros_like(p))
                outputs.append(out + suffix)
                axes[name + suffix] = axes[out + suffix] = {1: "state_batch"}
    return {"names": names, "args": tuple(args), "outputs": outputs, "axes": axes}


def _describe(name: str, t: Tensor, axes: dict) -> dict:
    dims = [axes.get(name, {}).get(i, int(n)) for i, n in enumerate(t.shape)]
    return {"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": dims}


def _describe_state(layer: Recurrent) -> dict:
    return {"cell": layer.cell, "num_layers": layer.num_layers, "directions": layer.num_directions,
            "hidden_size": layer.hidden_size, "shape": "(num_layers * directions, state_batch, hidden_size)",
            "start": "zeros"}


def sidecar(art: Artifact, sig: dict, outputs: tuple, layers: list, onnx_name: str) -> dict:
    """The JSON beside the graph. ``state``: None (no state), one network's layer description, or for
    an ensemble ``{"members": [description | None per member], "weights": [...]}``: member m's
    state is ``h0_m`` (``c0_m``), and the outputs are the members' outputs averaged."""

    state = None
    if "ensemble" in art.meta:
        state = {"members": [None if layer is None else _describe_state(layer) for layer in layers],
                 "weights": art.meta["ensemble"]["weights"]}
    elif layers[0] is not None:
        state = _describe_state(layers[0])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rnnkit_version": __version__,
        "model_file": onnx_name, "task": art.task, "source": str(art.path),
        "inputs": [_describe(n, a, sig["axes"]) for n, a in zip(sig["names"], sig["args"])],
        "outputs": [_describe(n, o, sig["axes"]) for n, o in zip(sig["outputs"], outputs)],
        "state": state,
        "preprocessing": art.task_state,  # vocabulary / scaler / labels / normaliser / windows
        "task_config": art.meta.get("task_config", {}),
        "model": art.meta.get("model") or art.model_config.to_dict(),  # an ensemble: its first member's
        "metrics": art.metrics,
    }


def export_onnx(run_dir, out=None, opset: int = 17) -> tuple[Path, Path]:
    """Write ``out`` (default ``DIR/model.onnx``) and ``out`` with suffix ``.json``; returns both paths."""
    art = open_run(run_dir)
    if art.task == "tag":
        raise UserError(f"{art.path}: a tag run cannot be exported to ONNX yet")
    out = Path(out) if out is not None else art.path / "model.onnx"
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    model = art.build_model().eval()
    pin_fused(model, str(art.path))
    layers = state_layers(model)
    sig = signature(art, model, layers)
    graph = StatefulGraph(model, art.task in USES_LENGTHS, layers, ensemble=hasattr(model, "members")).eval()
    with torch.no_grad():
        outputs = graph(*sig["args"])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer/deprecation chatter
        torch.onnx.export(graph, sig["args"], str(tmp), input_names=sig["names"], output_names=sig["outputs"],
                          dynamic_axes=sig["axes"], opset_version=opset, dynamo=False)
    tmp.replace(out)
    side = out.with_suffix(".json")
    artifacts.write_file_atomic(side, (json.dumps(sidecar(art, sig, outputs, layers, out.name), indent=1) + "\n").encode())
    return out, side
