"""rnnkit's benchmark suite: ``python -m benchmarks`` (see ``__main__.py``).

Modules: ``shapes`` (the five training shapes of cpu-facts.md and their models), ``timing``
(one timed training step, interleaved peers, statistics), ``worker`` (a subprocess that runs a
peer in a clean process: torch.nn without flush-to-zero, or Keras), ``generation`` (chars/s of
stateful sampling), ``report`` (tables and the BENCHMARKS.md writer).

Nothing here imports rnnkit at module level: the torch.nn-default peer runs in a worker process
that must never import it (rnnkit turns flush-to-zero on at import).
"""
