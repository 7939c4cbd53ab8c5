"""Errors and warnings raised by lawfit."""
from __future__ import annotations


class LawfitError(ValueError):
    """Bad input to lawfit (a table, a column, a law name, a budget): the message is one line."""


class LawfitWarning(UserWarning):
    """Something was done to the user's data that they should know about (rows dropped, budgets skipped)."""
