"""The one exception root of the training package.

Every error that training raises on purpose (a source that cannot be read, a
checkpoint that does not match, a failed export gate, a run directory in the
wrong state) is a :class:`TrainingError`; ``dicom-node-train`` reports it as
one line and exit status 1. Arguments that are wrongly typed or out of range
are refused by the constructors that check them with :class:`TypeError` and
:class:`ValueError` (the CLI reports those as usage errors, exit status 2).

The subclasses that replace a former :class:`ValueError` or
:class:`RuntimeError` still derive from it, so callers that caught the
built-in class keep working.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Root of every error the training package raises on purpose."""


class PairSourceError(TrainingError, ValueError):
    """A pair source (manifest, folder, groups file, archive) is missing or malformed."""


class SplitError(TrainingError, ValueError):
    """A split cannot be made or read (too few patients, an empty split, a bad ``split.json``)."""


class CheckpointError(TrainingError, ValueError):
    """A checkpoint cannot be read, lacks entries, or does not match the requested run."""


class ExportError(TrainingError, RuntimeError):
    """The export failed or the exported model failed the parity gate."""


class EvaluationError(TrainingError, ValueError):
    """An evaluation input (a model, a split, an evaluation file) is missing or unusable."""


class RunError(TrainingError):
    """A run directory is in the wrong state for the command (e.g. it already holds a run)."""
