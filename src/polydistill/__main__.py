"""`python -m polydistill` is the `polydistill` command."""

from polydistill.cli import main

main()
