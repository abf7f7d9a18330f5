"""The task contract: what a job adds on top of the shared model, trainer, artifact and CLI.

A task adds a data pipeline, a head and its metrics, nothing more. Each task module defines a
subclass of :class:`Task` and registers an instance in :data:`TASKS` (see ``tasks/__init__.py``):

1. ``Config``: a dataclass of the task's data options (sequence length, window/horizon, maximum
   length and vocabulary size, MNIST mode, ...). Every field is a CLI flag and a config-file key.
2. ``prepare(config, data, seed) -> PreparedData``: train/val/test batch sources and the JSON-able
   *task state* (vocabulary, scaler parameters, label names, window sizes), plus data info
   (name, path, sha256) stored in the artifact.
3. ``model_config(task_state, config, model) -> ModelConfig``: fills in what comes from the data
   (encoder kind, ``input_size``, ``head``, ``output_size``) on top of the user's model options.
4. ``loss(outputs, batch)`` (a scalar to minimise) and ``evaluate(model, batches) -> dict`` (a
   full pass; snake_case metric names; must contain ``loss``). The trainer calls
   ``loss_fn(config, model)``, which returns ``loss`` unless the task config or a loss with
   parameters in the network (a CRF's transitions) needs another.
5. ``load(artifact) -> facade``: the ready-to-use object ``rnnkit.load(DIR)`` returns
   (``TextGenerator``, ``Forecaster``, ``TextClassifier``, ``SequenceClassifier``).
   ``artifact`` is an :class:`rnnkit.tasks.artifact.Artifact`: ``.path``, ``.meta`` (artifact.json),
   ``.task_config`` (a ``Config`` instance), ``.model_config``, ``.train_config``,
   ``.task_state``, ``.metrics``, ``.data``, ``.state_dict()`` (checked weights) and
   ``.build_model()`` (``Task.build_model`` -- by default a ``SequenceModel`` -- with them, eval mode).

Optional for ``rnnkit evaluate DIR --data FILE`` (a file given to evaluate is scored whole):

- ``prepare_whole(config, data, task_state) -> BatchSource``: one source over ALL of ``data``
  (no train/val/test split), read with the TRAINED task state (vocabulary, scaler, labels from
  the artifact; nothing is refitted). The default refuses with a one-line error.
- ``examples(batch) -> int``: how many examples a batch scores (``len(batch.targets)`` by
  default; textgen: tokens); ``rnnkit evaluate`` reports their sum as ``examples``.

A new network for training comes from ``Task.new_model`` (seed, ``build_model``, then the
optional ``init_model`` hook for start values such as pretrained word vectors).

Optional CLI hooks (defaults do nothing / refuse the verb):

6. ``add_arguments(verb, parser)``: add the options of ``rnnkit sample|predict|evaluate DIR``
   for this task (``--prime``, ``--length``, ``--horizon``, ``--plot``, ``--show-examples``,
   ``--backtest``, ...) to the argparse ``parser``. Called only for the task read from the
   artifact, so option names never clash between tasks. Do not reuse the generic options
   (``evaluate`` already has ``--data``, ``--split``, ``--json``).
7. ``run_verb(verb, facade, args) -> int | None``: do ``sample`` / ``predict`` with the loaded
   facade and the parsed ``args``; print results to stdout, return an exit status (None = 0).
   For ``evaluate`` it is called after the generic metrics are computed, with them in
   ``args.metrics`` (a dict): add keys (snake_case) to it and/or write files, but do not print
   to stdout (``--json`` must print exactly one JSON object). Raise ``UserError`` for user mistakes.
   The default refuses ``sample``/``predict`` with a one-line error and does nothing for ``evaluate``.

Ensembles of finished runs (``rnnkit ensemble``, :mod:`rnnkit.ensembles`) ask three hooks, each
with a default for tasks whose outputs are class (or next-token) logits:

8. ``ensemble_key(task_state) -> dict``: what the members must share (vocabulary, scaler,
   labels, windows); default: the whole task state.
9. ``average_outputs(outputs, weights) -> Tensor``: one output from the members'; default: the
   weighted mean of the probabilities, as log-probabilities.
10. ``ensemble_evidence(models, batches) -> tuple``: what the weights are fitted on; default:
    ``("likelihood", log p_m(y_n))``, for the probability mixture with the highest likelihood.

Deployment hooks (``rnnkit export`` and ``rnnkit serve`` read these, never the task's name):

11. ``serve_input``: the request field ``rnnkit serve`` takes: ``"texts"`` (POST /predict with
    strings), ``"sequences"`` (arrays of feature vectors), ``"history"`` (a forecast's history),
    ``"prime"`` (POST /generate), ``"sentences"`` (POST /tag with texts or word lists),
    ``"recordings"`` (POST /transcribe with WAV files or features), ``"pairs"`` (POST /translate
    with sentences); "" when the task cannot be served.
12. ``exportable`` (False: ``rnnkit export`` refuses the task's runs), ``takes_lengths`` (the model reads ``lengths`` (B,)), ``example_inputs(model_config,
    task_state, B, T)`` (a traced input) and ``export_axes(task_state)`` (which axes are dynamic)
    shape the exported ONNX graph; ``export_extras(model)`` adds to its JSON; ``export_graphs(model)``
    replaces the one graph by several (seq2seq: the encoder and one decoder step).

Config fields: every field of ``Config`` becomes ``--field-name`` (``--field_name`` accepted) and a
key of the config file's ``[data]`` section, typed by its annotation (int, float, str, bool,
Optional[...]); ``field(metadata={"choices": (...), "help": "..."})`` adds choices/help text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from rnnkit.data.batching import Batch
from rnnkit.models import ModelConfig, SequenceModel


class BatchSource(Protocol):
    """A reproducible stream of batches: the same (epoch, seed) always gives the same batches.

    The trainer resumes inside an epoch by skipping the first ``cursor`` batches of
    ``epoch(e, seed)``, so the order must depend only on ``(epoch, seed)``.
    """

    def __len__(self) -> int:  # batches per epoch
        ...

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        ...


@dataclass
class PreparedData:
    train: BatchSource
    val: Optional[BatchSource]
    test: Optional[BatchSource]
    task_state: dict  # JSON-able: vocabulary / scaler / labels / windows
    data_info: dict = field(default_factory=dict)  # {"name", "path", "sha256", ...}


class Task:
    """Base class of the five jobs; see the module docstring for the contract."""

    name: str = ""
    Config: type = object

    def prepare(self, config: Any, data: str, seed: int) -> PreparedData:
        raise NotImplementedError

    def prepare_whole(self, config: Any, data: str, task_state: dict) -> BatchSource:
        """All of ``data`` as one batch source, read with the trained ``task_state`` (see above)."""
        from rnnkit.errors import UserError

        raise UserError(f"task {self.name!r} cannot evaluate a file given with --data; "
                        "leave out --data to evaluate the training data's split")

    def examples(self, batch: Batch) -> int:
        """Examples a batch scores (for the count ``rnnkit evaluate`` reports)."""
        return int(batch.targets.shape[0])

    def model_config(self, task_state: dict, config: Any, model: ModelConfig) -> ModelConfig:
        raise NotImplementedError

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        raise NotImplementedError

    def loss_fn(self, config: Any, model=None):
        """The training loss ``(outputs, batch) -> scalar`` for this task config and the network
        being trained: ``loss`` unless the config chooses another. ``model`` is there for a loss
        with parameters of its own that live in the network (tag's CRF transition scores)."""
        return self.loss

    def evaluate(self, model, batches: Iterable[Batch]) -> dict:
        raise NotImplementedError

    def load(self, artifact) -> Any:
        raise NotImplementedError

    def build_model(self, model_config: ModelConfig, task_state: dict):
        """The network for ``model_config``; override only if the task does not use SequenceModel.

        The shared runner (``rnnkit train/resume/evaluate``) and ``Artifact.build_model()`` call it.
        """
        return SequenceModel(model_config)

    def init_model(self, model, task_state: dict, config: Any) -> None:
        """Task-specific start values for a new network (e.g. pretrained word vectors); none by default."""

    def new_model(self, model_config: ModelConfig, task_state: dict, config: Any, seed: int):
        """A freshly initialised network to train: all generators seeded, ``build_model``, ``init_model``.

        ``rnnkit train`` and every facade's ``fit`` call this, so the same seed gives the same
        starting weights from the CLI and from Python.
        """
        from rnnkit.runtime import seed_everything

        seed_everything(seed)
        model = self.build_model(model_config, task_state)
        self.init_model(model, task_state, config)
        return model

    def run_meta(self, model_config: ModelConfig, config: Any, task_state: dict, data: dict) -> dict:
        """The fields of artifact.json that describe a run of this task (the trainer adds the
        training config, status and metrics; :mod:`rnnkit.artifacts` the format and weights)."""
        return {"task": self.name, "model": asdict(model_config), "task_config": asdict(config),
                "task_state": task_state, "data": data}

    # -- ensembles of finished runs (see the module docstring, items 8-10) -----------------------
    def ensemble_key(self, task_state: dict) -> dict:
        """The part of the task state every member of an ensemble must share, because inputs are
        prepared and outputs read once for all of them (vocabulary, scaler, labels, windows)."""
        return task_state

    def average_outputs(self, outputs: list, weights: Tensor) -> Tensor:
        """An ensemble's output from its M members' outputs (M logits (..., C) of one shape) and
        weights (M,) (>= 0, sum 1): the weighted mean of the class (next-token) probabilities, as
        log-probabilities ``log sum_m w_m softmax(z_m)`` (..., C), which softmax, cross-entropy and
        argmax read as logits."""
        logp = torch.stack([torch.log_softmax(z.float(), dim=-1) for z in outputs])  # (M, ..., C)
        log_w = weights.to(logp).log().view(-1, *[1] * (logp.dim() - 1))
        return torch.logsumexp(logp + log_w, dim=0)

    def ensemble_evidence(self, models: list, batches: list) -> tuple:
        """What an ensemble's weights are fitted on (:func:`rnnkit.ensembles.fit_weights`), from the
        validation ``batches``: ``("likelihood", log p_m(y_n) (M, N))`` for the probability mixture
        with the highest likelihood of the targets, i.e. the lowest validation loss."""
        return "likelihood", torch.stack([target_log_probs(model, batches) for model in models])

    # -- deployment (see the module docstring, items 11-12) -------------------------------------
    serve_input: str = ""
    exportable: bool = True
    takes_lengths: bool = False

    def example_inputs(self, model_config: ModelConfig, task_state: dict, batch: int, time: int) -> Tensor:
        """An input (B, T) of token ids for an embedding encoder, else (B, T, F) floats, to trace
        the model with."""
        if model_config.encoder == "embedding":
            return torch.randint(0, model_config.input_size, (batch, time))
        return torch.randn(batch, time, model_config.input_size)

    def export_axes(self, task_state: dict) -> tuple[dict, dict]:
        """The dynamic axes of the graph's inputs and of its outputs, as ``{axis: name}``;
        default any batch and length in, one output per sequence."""
        return {0: "batch", 1: "time"}, {0: "batch"}

    def export_extras(self, model) -> dict:
        """Entries the export JSON adds for what runs after the graph (tag: the CRF's scores)."""
        return {}

    def export_graphs(self, model) -> Optional[dict]:
        """Several graphs instead of the one stateful graph (seq2seq: an encoder and one decoder
        step): ``{name: (module, example args, input names, output names, dynamic axes)}``; None
        (default) exports ``model`` itself."""
        return None

    # -- optional CLI hooks (see the module docstring, items 6-7) -------------------------------
    def add_arguments(self, verb: str, parser) -> None:
        """Add this task's options of ``rnnkit <verb> DIR`` (verb: sample | predict | evaluate)."""

    def run_verb(self, verb: str, facade: Any, args) -> Optional[int]:
        """Run ``rnnkit <verb> DIR`` with the loaded facade; returns an exit status (None = 0)."""
        if verb == "evaluate":
            return None
        from rnnkit.errors import UserError

        raise UserError(f"task {self.name!r} has no {verb!r} command")


def target_log_probs(model: nn.Module, batches: Sequence) -> Tensor:
    """log p(target) (N,) of every target in ``batches`` under ``model``'s outputs read as logits
    over the last axis: (B, T, V) with targets (B, T), or (B, C) with targets (B,); eval mode, the
    state carried across ``carries_state`` batches."""
    model.eval()
    scores, state = [], None
    with torch.inference_mode():
        for batch in batches:
            logits, new_state = model(batch.inputs, state if batch.carries_state else None, batch.lengths)
            state = new_state if batch.carries_state else None
            logp = torch.log_softmax(logits.double(), dim=-1)
            scores.append(logp.gather(-1, batch.targets.unsqueeze(-1)).flatten())
    return torch.cat(scores)
