"""RetryPolicy: the exception's class decides between retry, dead-letter and fail-now."""

from __future__ import annotations

import random

import pytest

from dicom_node.config import JobSettings
from dicom_node.errors import (
    ConfigError,
    DispatchError,
    JobNotFoundError,
    JobStateError,
    ModelError,
    NodeError,
    PermanentError,
    RetryableError,
    StorageError,
)
from dicom_node.pixels import PixelDataError
from dicom_node.retry import Decision, RetryPolicy, Verdict, backoff_delay, error_text

SETTINGS = JobSettings(max_attempts=3, retry_base_delay=2.0, retry_max_delay=30.0, retry_jitter=0.0)


@pytest.mark.parametrize(
    "error",
    [PermanentError("x"), ModelError("x"), PixelDataError("x"), PermanentError, ModelError],
)
def test_a_permanent_error_fails_now_whatever_the_attempts(
    error: BaseException | type[BaseException],
) -> None:
    policy = RetryPolicy(SETTINGS)
    assert policy.decide(error, 1) == Verdict(Decision.FAIL_NOW)
    assert policy.decide(error, 3) == Verdict(Decision.FAIL_NOW)


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("x"),
        StorageError("x"),
        DispatchError,
        ZeroDivisionError("an unknown exception"),
        KeyError,
        OSError("disk"),
    ],
)
def test_retryable_and_unknown_errors_retry_with_backoff_then_dead_letter(
    error: BaseException | type[BaseException],
) -> None:
    policy = RetryPolicy(SETTINGS)
    assert policy.decide(error, 1) == Verdict(Decision.RETRY, 2.0)
    assert policy.decide(error, 2) == Verdict(Decision.RETRY, 4.0)
    assert policy.decide(error, 3) == Verdict(Decision.DEAD_LETTER)
    assert policy.decide(error, 7) == Verdict(Decision.DEAD_LETTER)


def test_attempts_count_the_failed_one() -> None:
    with pytest.raises(ValueError, match="attempts: 0 must be at least 1"):
        RetryPolicy(SETTINGS).decide(RetryableError("x"), 0)
    assert RetryPolicy(SETTINGS).exhausted(3) and not RetryPolicy(SETTINGS).exhausted(2)


def test_every_error_the_node_raises_on_purpose_has_one_root() -> None:
    for cls in (
        ConfigError,
        RetryableError,
        PermanentError,
        StorageError,
        DispatchError,
        ModelError,
        PixelDataError,
        JobNotFoundError,
        JobStateError,
    ):
        assert issubclass(cls, NodeError), cls
    assert issubclass(JobNotFoundError, LookupError) and issubclass(JobStateError, ValueError)


def test_the_kept_error_text_names_the_class_of_an_unexpected_exception() -> None:
    assert error_text(RetryableError("peer busy")) == "peer busy"
    assert error_text(ZeroDivisionError("division\nby zero")) == (
        "unexpected error: ZeroDivisionError: division by zero"
    )


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert [backoff_delay(n, SETTINGS) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    jittered = JobSettings(retry_base_delay=10.0, retry_max_delay=100.0, retry_jitter=0.2)
    policy = RetryPolicy(jittered, random.Random(7))
    delays = [policy.delay(1) for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert max(delays) - min(delays) > 2.0


def test_the_default_retry_schedule_outlasts_a_ten_minute_outage() -> None:
    """With the defaults, a delivery is still being retried after 10 minutes of PACS outage."""
    settings = JobSettings()  # the defaults of config.py and node.example.toml
    worst = random.Random(0)
    worst.random = lambda: 0.0  # type: ignore[method-assign]  # every jitter at its minimum
    waited = sum(backoff_delay(n, settings, worst) for n in range(1, settings.max_attempts))
    assert waited > 600, waited
