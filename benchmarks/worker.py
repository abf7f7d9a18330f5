"""A peer in its own process, driven over stdin/stdout with one JSON object per line.

``python -m benchmarks.worker torch``: torch.nn exactly as a user script runs it. This process
never imports rnnkit, and the parent starts it with ``RNNKIT_FLUSH_DENORMAL=0``, so its threads
keep torch's default (denormals not flushed).

``python -m benchmarks.worker keras``: the same shapes in Keras 3 (see ``keras_peer``).

Requests: ``{"shape": "S3", "steps": 3}`` -> reply ``{"times": [s, s, s], "ftz": false}``;
``{"quit": true}`` ends the process. The first request for a shape builds its model.
"""

from __future__ import annotations

import json
import sys


def denormals_flushed() -> bool:
    """True when this thread flushes denormals (a denormal input reads as zero)."""
    import torch

    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


def _torch_stepper(name: str):
    from benchmarks import shapes, timing

    shape = shapes.SHAPES[name]
    return timing.Trainee(shape, shapes.build_torch(shape)).step


def main() -> None:
    kind = sys.argv[1]
    if kind == "torch":
        make, ftz = _torch_stepper, denormals_flushed()
    else:
        from benchmarks import keras_peer

        make, ftz = keras_peer.stepper, None
    steppers = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        name = request["shape"]
        if name not in steppers:
            steppers[name] = make(name)
        times = [steppers[name]() for _ in range(request["steps"])]
        print(json.dumps({"times": times, "ftz": ftz}), flush=True)


if __name__ == "__main__":
    main()
