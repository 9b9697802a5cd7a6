"""The project's errors for bad input: what the `weightspace` command reports in one line.

Every check of user input in weightspace raises `WeightspaceError` (a wrong value: an
unknown option, a bad shape, an out-of-range number, an output directory holding something
else) or `WeightspaceTypeError` (a wrong type). They subclass `ValueError` and `TypeError`,
so ``except ValueError`` keeps working. `hyper.cli.main` catches exactly `INPUT_ERRORS`:
it prints their first line and exits with status 2, while a bare `ValueError`, `TypeError`
or `KeyError` (a bug) keeps its traceback.

Other errors of the family: `hyper.checkpoint.CheckpointError` (a missing, corrupted or
mismatched checkpoint).
"""

from __future__ import annotations

__all__ = ["INPUT_ERRORS", "WeightspaceError", "WeightspaceTypeError"]


class WeightspaceError(ValueError):
    """Bad input: a value the caller gave (or a file it pointed to) is wrong; the message
    names the offending option, leaf path or shape."""


class WeightspaceTypeError(TypeError):
    """Bad input of the wrong type (a list where a mapping is needed, a string for a number)."""


INPUT_ERRORS: tuple[type[Exception], ...] = (WeightspaceError, WeightspaceTypeError)
"""The errors that mean "bad input" (``except INPUT_ERRORS``)."""
