"""The exception types the CLI prints as one line: bad user input, and a lost peer process.

Anything a user can get wrong (a config key, a path, a data file) raises `UserError` with a
one-line message that names the problem; the CLI prints it and exits with code 2, without a
traceback. Bugs stay ordinary exceptions so that they keep their traceback.

`CollectiveFailed`: a process of a torchrun run stopped (died, or did not answer in time)
while this one waited on it; the CLI prints its line and exits with code 1.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class CollectiveFailed(RuntimeError):
    """Another rank stopped (died, or timed out) while this one waited on it."""
