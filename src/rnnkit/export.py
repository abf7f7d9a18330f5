"""Export a run directory's model to ONNX, with its preprocessing beside it as JSON.

``export_onnx(DIR, out=None) -> (model.onnx, model.json)``; CLI ``rnnkit export DIR --format onnx``.

The graph is the model's ``forward`` with the recurrent state as explicit inputs and outputs,
so a runtime can run whole sequences or one step at a time (feed ``hn``/``cn`` back in)::

    inputs   (B, T) int64 token ids | (B, T, K) int64 (word + bigram ids) | (B, T, F) float32
             | (B, T, 1 + W) int64 (tag: word id, then the word's W character ids, 0 after)
    lengths  (B,) int64, valid steps per row (textclass, seqclass, tag only; 1 <= lengths <= T)
    h0       (L*D, B', H) float32 initial hidden state (zeros to start); c0 likewise for LSTM
    ->
    outputs  the model's outputs: (B, T, V) textgen logits, (B, C) class logits,
             (B, K, C) or (B, L, K', C) scaled forecasts (see ``spec`` in the JSON),
             (B, T, C) tag scores (emissions; the CRF's ``transitions`` (C, C) are in the
             JSON, and the best path is Viterbi over both, :func:`rnnkit.crf.viterbi`)
    hn [, cn] the final state, same shapes as h0 [, c0]

B and T are dynamic axes (B' = B x channels for channel-independent forecasters). The SegRNN
forecaster has no state inputs and a fixed look-back T (its segments are fixed at training).

A model whose state is a list, one state per network (an average of several runs), exports
network m's state as ``h0_m`` [, ``c0_m``] -> ``hn_m`` [, ``cn_m``].

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
from rnnkit.tasks import get_task
from rnnkit.tasks.artifact import Artifact
from rnnkit.version import __version__
from rnnkit.errors import UserError
from rnnkit.recurrent import Recurrent

FORMAT = "rnnkit-onnx"
FORMAT_VERSION = 1


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


def state_parts(state) -> list:
    """Per network its state tensors: () stateless, (h,) or (h, c). ``state`` is one network's
    (None, h, or an (h, c) tuple) or a list of such, one per network."""
    states = state if isinstance(state, list) else [state]
    return [() if s is None else s if isinstance(s, tuple) else (s,) for s in states]


class StatefulGraph(nn.Module):
    """``forward(inputs, [lengths], *states) -> (outputs, *new states)`` around a model that follows
    rnnkit's ``model(inputs, state, lengths) -> (outputs, state)`` convention.

    ``parts``: per network how many state tensors it carries (0, 1 for h, 2 for h and c), in the
    order the graph takes and returns them; ``as_list``: the model takes its state as a list of
    the networks' states. Without any state the graph is ``forward(inputs, [lengths]) -> outputs``.
    """

    def __init__(self, model: nn.Module, lengths: bool, parts: list, as_list: bool):
        super().__init__()
        self.model, self.lengths, self.parts, self.as_list = model, lengths, parts, as_list

    def forward(self, *args: Tensor):
        x, rest = args[0], list(args[1:])
        lengths = rest.pop(0) if self.lengths else None
        states = []
        for n in self.parts:
            states.append(None if n == 0 else rest[0] if n == 1 else (rest[0], rest[1]))
            rest = rest[n:]
        state = None if not any(self.parts) else states if self.as_list else states[0]
        y, state = self.model(x, state, lengths)
        new = [p for parts in state_parts(state) for p in parts]
        return (y, *new) if new else y


def signature(art: Artifact, model: nn.Module) -> dict:
    """Input/output names, example tensors and dynamic axes of the graph, and the state's layout
    (``parts``, ``as_list``: see :class:`StatefulGraph`). One network's state is ``h0``/``c0`` ->
    ``hn``/``cn``, network m's of a list ``h0_m``/``c0_m`` -> ``hn_m``/``cn_m``."""
    task, B, T = get_task(art.task), 2, 5
    x = task.example_inputs(art.model_config, art.task_state, B, T)
    input_axes, output_axes = task.export_axes(art.task_state)
    names, args = ["inputs"], [x]
    axes = {"inputs": input_axes, "outputs": output_axes}
    if task.takes_lengths:
        names.append("lengths")
        args.append(torch.tensor([T, max(1, T - 2)], dtype=torch.int64))
        axes["lengths"] = {0: "batch"}
    outputs = ["outputs"]
    with torch.no_grad():
        _, state = model(x, None, args[1] if task.takes_lengths else None)
    parts = state_parts(state)
    as_list = isinstance(state, list)
    for m, network in enumerate(parts):
        for i, p in enumerate(network):
            suffix = f"_{m}" if as_list else ""
            name, out = ("h0", "hn") if i == 0 else ("c0", "cn")
            names.append(name + suffix)
            args.append(torch.zeros_like(p))
            outputs.append(out + suffix)
            axes[name + suffix] = axes[out + suffix] = {1: "state_batch"}
    return {"names": names, "args": tuple(args), "outputs": outputs, "axes": axes,
            "parts": [len(network) for network in parts], "as_list": as_list, "takes_lengths": task.takes_lengths}


def _describe(name: str, t: Tensor, axes: dict) -> dict:
    dims = [axes.get(name, {}).get(i, int(n)) for i, n in enumerate(t.shape)]
    return {"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": dims}


def _describe_state(layer: Recurrent) -> dict:
    return {"cell": layer.cell, "num_layers": layer.num_layers, "directions": layer.num_directions,
            "hidden_size": layer.hidden_size, "shape": "(num_layers * directions, state_batch, hidden_size)",
            "start": "zeros"}


def sidecar(art: Artifact, sig: dict, outputs: tuple, model: nn.Module, onnx_name: str) -> dict:
    """The JSON beside the graph. ``state``: None (no state), the network's state layer, or what
    the artifact says of several networks' (:meth:`~rnnkit.tasks.artifact.Artifact.export_state`)."""
    layers = [None if layer is None else _describe_state(layer) for layer in model.state_layers()]
    graph = {"model_file": onnx_name,
             "inputs": [_describe(n, a, sig["axes"]) for n, a in zip(sig["names"], sig["args"])],
             "outputs": [_describe(n, o, sig["axes"]) for n, o in zip(sig["outputs"], outputs)],
             "state": art.export_state(layers)}
    return _side_meta(art, model, graph)


def _side_meta(art: Artifact, model: nn.Module, graphs: dict) -> dict:
    """The export JSON: format, the run's preprocessing, configs and metrics, the task's extras,
    and ``graphs`` (what describes the graph file or files)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rnnkit_version": __version__,
        "task": art.task, "source": str(art.path), **graphs,
        "preprocessing": art.task_state,  # vocabulary / scaler / labels / normaliser / windows
        "task_config": art.meta.get("task_config", {}),
        "model": art.meta.get("model") or art.model_config.to_dict(),  # several runs: the first one's
        "metrics": art.metrics,
        **get_task(art.task).export_extras(model),
    }


def export_onnx(run_dir, out=None, opset: int = 17) -> tuple[Path, Path]:
    """Write ``out`` (default ``DIR/model.onnx``) and ``out`` with suffix ``.json``; returns both paths."""
    art = open_run(run_dir)
    if not get_task(art.task).exportable:
        raise UserError(f"{art.path}: a {art.task} run cannot be exported to ONNX yet")
    out = Path(out) if out is not None else art.path / "model.onnx"
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    model = art.build_model().eval()
    pin_fused(model, str(art.path))
    graphs = get_task(art.task).export_graphs(model)
    if graphs is not None:
        return export_graphs(art, model, graphs, out, opset)
    sig = signature(art, model)
    graph = StatefulGraph(model, sig["takes_lengths"], sig["parts"], sig["as_list"]).eval()
    with torch.no_grad():
        outputs = graph(*sig["args"])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    tmp = out.with_name(out.name + ".tmp")
    _write_graph(graph, sig["args"], sig["names"], sig["outputs"], sig["axes"], out, opset)
    side = out.with_suffix(".json")
    artifacts.write_file_atomic(side, (json.dumps(sidecar(art, sig, outputs, model, out.name), indent=1) + "\n").encode())
    return out, side


def _write_graph(module: nn.Module, args: tuple, names: list, outputs: list, axes: dict, out: Path, opset: int) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer/deprecation chatter
        torch.onnx.export(module, args, str(tmp), input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    tmp.replace(out)


def export_graphs(art: Artifact, model: nn.Module, graphs: dict, out: Path, opset: int) -> tuple[Path, Path]:
    """Several graphs (``Task.export_graphs``): ``out``'s stem + ``.NAME.onnx`` each, and one JSON
    (``out`` with suffix ``.json``) naming them under ``graphs`` with their inputs and outputs."""
    described, paths = {}, []
    for name, (module, args, inputs, outputs, axes) in graphs.items():
        path = out.with_name(f"{out.stem}.{name}.onnx")
        module.eval()
        with torch.no_grad():
            results = module(*args)
        _write_graph(module, args, inputs, outputs, axes, path, opset)
        described[name] = {"model_file": path.name, "inputs": [_describe(n, a, axes) for n, a in zip(inputs, args)],
                           "outputs": [_describe(n, r, axes) for n, r in zip(outputs, results)]}
        paths.append(path)
    side = out.with_suffix(".json")
    meta = _side_meta(art, model, {"graphs": described})
    artifacts.write_file_atomic(side, (json.dumps(meta, indent=1) + "\n").encode())
    return paths[0], side
