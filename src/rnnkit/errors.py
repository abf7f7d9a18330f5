"""User errors: one line naming the file/position/value and what was expected.

The CLI prints ``rnnkit: error: <message>`` on stderr and exits with status 2, no traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, flag, config, artifact), not a bug in rnnkit."""


def check_at_least(obj, minimum: int, names, error=ValueError) -> None:
    """Config validation: raise ``error`` for the first field of ``obj`` in ``names`` below ``minimum``
    (0: "must not be negative", 1: "must be at least 1"); None values are left alone."""
    rule = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise error(f"{name} {rule}, got {value}")
