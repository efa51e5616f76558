"""molamd: the bank-facing daemon of the Molam payments platform."""

__version__ = "0.1.0"
