"""The five shapes in Keras 3 (TensorFlow backend), for the Keras peer of the suite.

Only imported inside ``python -m benchmarks.worker keras``; ``available()`` tells the suite
whether to start that worker. Same batch and targets as the torch peers; one timed step is
``model.train_on_batch`` (forward + backward + Adam).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time


KERAS_PYTHON_ENV = "RNNKIT_KERAS_PYTHON"


def python() -> str:
    """The interpreter of the Keras peer: ``$RNNKIT_KERAS_PYTHON`` (a separate virtualenv with
    tensorflow-cpu, keras and torch, so Keras never enters rnnkit's own environment), else this one."""
    return os.environ.get(KERAS_PYTHON_ENV) or sys.executable


def available() -> bool:
    """Keras 3 and TensorFlow both importable by ``python()`` (checked without importing them here)."""
    if python() == sys.executable:
        return all(importlib.util.find_spec(m) is not None for m in ("keras", "tensorflow"))
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('keras') and u.find_spec('tensorflow') else 1)"
    return subprocess.run([python(), "-c", probe], capture_output=True).returncode == 0


def _model(shape):
    import keras
    from keras import layers

    cell = {"rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}[shape.cell]
    model = keras.Sequential()
    if shape.vocab:
        model.add(keras.Input((shape.steps,), dtype="int32"))
        model.add(layers.Embedding(shape.vocab, shape.features))
    else:
        model.add(keras.Input((shape.steps, shape.features)))
    for k in range(shape.layers):
        last = k == shape.layers - 1
        rnn = cell(shape.hidden, return_sequences=(not last) or shape.head == "per_step")
        model.add(layers.Bidirectional(rnn) if shape.bidirectional else rnn)
    model.add(layers.Dense(shape.outputs))
    loss = {
        "ce": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "mse": keras.losses.MeanSquaredError(),
        "bce": keras.losses.BinaryCrossentropy(from_logits=True),
    }[shape.loss]
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return model


def stepper(name: str):
    """A function running and timing one Keras training step of shape ``name``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from benchmarks import shapes

    shape = shapes.SHAPES[name]
    x, y = shapes.make_batch(shape)
    x, y = x.numpy(), y.numpy()
    model = _model(shape)

    def step() -> float:
        start = time.perf_counter()
        model.train_on_batch(x, y)
        return time.perf_counter() - start

    return step
