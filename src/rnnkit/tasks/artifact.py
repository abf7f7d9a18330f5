"""A run directory read as a task's artifact: artifact.json's configs as typed dataclasses and
the model built with its weights (the file format itself is :mod:`rnnkit.artifacts`)."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnkit import artifacts
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.training.config import TrainConfig, from_dict


class Artifact:
    """A read run directory: ``meta`` (artifact.json) plus typed accessors and the weights.

    ``task_config`` is an instance of the task's ``Config``; ``build_model()`` returns the
    ``SequenceModel`` with the selected weights loaded, in eval mode.
    """

    required = ("model", "weights")  # the artifact.json keys this kind of run cannot do without

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        for key in self.required:
            if key not in meta:
                raise UserError(f"{self.path / artifacts.ARTIFACT_JSON}: damaged artifact (missing {key!r})")

    task = property(lambda self: self.meta["task"])
    task_state = property(lambda self: self.meta.get("task_state", {}))
    metrics = property(lambda self: self.meta.get("metrics", {}))
    data = property(lambda self: self.meta.get("data", {}))

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.meta["model"], f"{self.path / artifacts.ARTIFACT_JSON} [model]")

    @property
    def train_config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.meta.get("train", {}), f"{self.path / artifacts.ARTIFACT_JSON} [train]")

    @property
    def task_config(self):
        cls = get_task(self.task).Config
        return from_dict(cls, self.meta.get("task_config", {}), f"{self.path / artifacts.ARTIFACT_JSON} [data]")

    def description(self) -> dict:
        """What ``rnnkit info --json`` adds to artifact.json's own fields (nothing for one network)."""
        return {}

    def export_state(self, layers: list) -> dict | None:
        """The ``state`` entry of an ONNX export's JSON from the description of each network's
        state (None: a stateless network): here the one network's."""
        return layers[0]

    def model_lines(self, parameters: int) -> list:
        """``rnnkit info``'s lines about the model."""
        return [f"model: {model_line(self.meta['model'])}, {parameters:,} parameters"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        w = self.meta["weights"]
        return artifacts.read_tensors(self.path / w.get("file", artifacts.WEIGHTS), "weights", w.get("sha256"))

    @property
    def model(self):
        """The SequenceModel with the selected weights (built once, eval mode)."""
        if getattr(self, "_model", None) is None:
            self._model = self.build_model()
        return self._model

    def build_model(self, device="cpu"):
        model = get_task(self.task).build_model(self.model_config, self.task_state)
        try:
            model.load_state_dict(self.state_dict())
        except RuntimeError as exc:
            raise UserError(f"{self.path / artifacts.WEIGHTS}: weights do not fit the model config ({str(exc).splitlines()[0]})") from None
        return model.to(device).eval()


def read_artifact(run_dir: str | Path) -> Artifact:
    """The run directory ``run_dir`` of one network, read and checked (see
    :func:`rnnkit.runs.open_run` for any run directory)."""
    return Artifact(run_dir, artifacts.read_meta(run_dir))


def model_line(model: dict) -> str:
    """A ModelConfig dict in one line: "2x lstm H=512, encoder embedding, head per_step"."""
    return (f"{model.get('num_layers')}x {model.get('cell')} H={model.get('hidden_size')}"
            f"{' bidirectional' if model.get('bidirectional') else ''}, encoder {model.get('encoder')}, "
            f"head {model.get('head')}")
