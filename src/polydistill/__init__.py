"""polydistill: distil one closed student model from several open-weight teachers.

See README.md for the two commands and docs/ARCHITECTURE.md for the data flow.
"""

__version__ = "0.1.0"
