"""The retry policy of jobs and dispatches: the exception's class decides.

:class:`RetryPolicy` turns a failure into one of three outcomes, after the
model of dramatiq:

- a :class:`~dicom_node.errors.PermanentError` fails the work now
  (:attr:`Decision.FAIL_NOW`);
- anything else, a :class:`~dicom_node.errors.RetryableError` or an
  exception the node did not expect, is retried after :func:`backoff_delay`
  (:attr:`Decision.RETRY`) until ``jobs.max_attempts`` attempts have been
  made, then dead-lettered (:attr:`Decision.DEAD_LETTER`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from dicom_node.config import JobSettings
from dicom_node.errors import NodeError, PermanentError


class Decision(StrEnum):
    """What to do with work that failed."""

    RETRY = "retry"
    """Try again after a delay."""
    DEAD_LETTER = "dead_letter"
    """Retryable, but the attempts are used up."""
    FAIL_NOW = "fail_now"
    """Permanent: retrying cannot help."""


@dataclass(frozen=True)
class Verdict:
    """The outcome :meth:`RetryPolicy.decide` chose."""

    decision: Decision
    delay: float | None = None
    """Seconds before the next attempt (:attr:`Decision.RETRY` only)."""


def backoff_delay(attempts: int, settings: JobSettings, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempts + 1``.

    ``retry_base_delay · 2^(attempts-1)``, capped at ``retry_max_delay``, then
    spread by ± ``retry_jitter`` (a fraction) so retries of many items do not
    fire together.
    """
    rng = rng or random.Random()
    raw = settings.retry_base_delay * (2 ** max(0, attempts - 1))
    capped = min(settings.retry_max_delay, raw)
    spread = 1.0 + settings.retry_jitter * (2.0 * rng.random() - 1.0)
    return max(0.0, capped * spread)


def _error_class(error: BaseException | type[BaseException]) -> type[BaseException]:
    return error if isinstance(error, type) else type(error)


def is_permanent(error: BaseException | type[BaseException]) -> bool:
    """Whether retrying cannot fix `error` (it is a :class:`~dicom_node.errors.PermanentError`)."""
    return issubclass(_error_class(error), PermanentError)


def is_expected(error: BaseException | type[BaseException]) -> bool:
    """Whether the node raised `error` on purpose (a :class:`~dicom_node.errors.NodeError`)."""
    return issubclass(_error_class(error), NodeError)


def error_text(error: BaseException) -> str:
    """The one-line reason kept on a failed job.

    The message of an error the node raised on purpose; the class and message
    of any other (``unexpected error: ZeroDivisionError: …``).
    """
    message = " ".join(str(error).split())
    if is_expected(error):
        return message
    return f"unexpected error: {error.__class__.__name__}: {message}"


@dataclass(frozen=True)
class RetryPolicy:
    """Decide between retry, dead-letter and fail-now for jobs and dispatches.

    Parameters
    ----------
    settings : JobSettings
        ``max_attempts`` and the backoff of :func:`backoff_delay`.
    rng : random.Random, optional
        Source of the jitter (tests pass a seeded one).
    """

    settings: JobSettings
    rng: random.Random | None = field(default=None, compare=False)

    def exhausted(self, attempts: int) -> bool:
        """Whether `attempts` attempts use up ``max_attempts``."""
        return attempts >= self.settings.max_attempts

    def delay(self, attempts: int) -> float:
        """Seconds to wait after attempt `attempts` failed (:func:`backoff_delay`)."""
        return backoff_delay(attempts, self.settings, self.rng)

    def decide(self, error: BaseException | type[BaseException], attempts: int) -> Verdict:
        """Decide what happens to work whose attempt number `attempts` raised `error`.

        Parameters
        ----------
        error : BaseException or its class
            What the attempt raised (for a dispatch, ``DispatchError``).
        attempts : int
            Attempts made so far, the failed one included.

        Returns
        -------
        Verdict
            :attr:`Decision.FAIL_NOW` for a permanent error; otherwise
            :attr:`Decision.RETRY` with its delay, or
            :attr:`Decision.DEAD_LETTER` once the attempts are used up.

        Raises
        ------
        ValueError
            If `attempts` is less than 1.
        """
        if attempts < 1:
            raise ValueError(f"attempts: {attempts} must be at least 1 (the failed attempt).")
        if is_permanent(error):
            return Verdict(Decision.FAIL_NOW)
        if self.exhausted(attempts):
            return Verdict(Decision.DEAD_LETTER)
        return Verdict(Decision.RETRY, self.delay(attempts))
