"""User errors: one line naming the file/position/value and what was expected.

The CLI prints ``rnnkit: error: <message>`` on stderr and exits with status 2, no traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, flag, config, artifact), not a bug in rnnkit."""
