"""The one exception type for bad user input.

Anything a user can get wrong (a config key, a path, a data file) raises `UserError` with a
one-line message that names the problem; the CLI prints it and exits with code 2, without a
traceback. Bugs stay ordinary exceptions so that they keep their traceback.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
