"""`python -m polydistill.serve serve|usage|keys ...`: the gateway's commands on their own."""

import sys

import typer

from polydistill.errors import UserError
from polydistill.serve.commands import register

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    try:
        app(standalone_mode=False)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
