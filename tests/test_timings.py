"""StageTimings: the one vocabulary of stage durations."""

from __future__ import annotations

import time

import pytest

from dicom_node.timings import STAGES, StageTimings, Stopwatch


def test_as_dict_has_the_stages_that_ran_in_pipeline_order() -> None:
    timings = StageTimings(write_ms=4.0, read_ms=1.0, infer_ms=3.0, tiles=6)
    assert timings.as_dict() == {"read": 1.0, "infer": 3.0, "write": 4.0}
    assert list(timings.as_dict()) == ["read", "infer", "write"]
    assert StageTimings().as_dict() == {}
    # Every stage has its field; the tile count is not a duration.
    full = StageTimings(**{f"{stage}_ms": 1.0 for stage in STAGES}, tiles=2)
    assert list(full.as_dict()) == list(STAGES)
    assert "tiles" not in full.as_dict()


def test_log_fields_name_units() -> None:
    timings = StageTimings(decode_ms=2.5, infer_ms=10.0, tiles=4)
    assert timings.log_fields() == {"decode_ms": 2.5, "infer_ms": 10.0, "tiles": 4}
    assert StageTimings(read_ms=1.0).log_fields() == {"read_ms": 1.0}


def test_merge_and_with_stage() -> None:
    base = StageTimings(read_ms=1.0, infer_ms=2.0)
    merged = base.merged(StageTimings(infer_ms=5.0, write_ms=3.0, tiles=2))
    assert merged == StageTimings(read_ms=1.0, infer_ms=5.0, write_ms=3.0, tiles=2)
    assert base == StageTimings(read_ms=1.0, infer_ms=2.0)  # frozen: a new value
    assert base.with_stage("blend", 0.5).blend_ms == 0.5
    assert merged.total_ms == 9.0
    assert StageTimings(queue_wait_ms=100.0, read_ms=1.0).total_ms == 1.0


def test_bad_values_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"stage must be one of queue_wait, read, .*; got 'inference'"
    ):
        StageTimings().with_stage("inference", 1.0)
    with pytest.raises(ValueError, match=r"infer_ms must be at least 0; got -1\.0"):
        StageTimings(infer_ms=-1.0)
    with pytest.raises(ValueError, match="read_ms must be at least 0; got nan"):
        StageTimings(read_ms=float("nan"))
    with pytest.raises(ValueError, match="tiles must be at least 1; got 0"):
        StageTimings(tiles=0)


def test_stopwatch_laps_are_consecutive() -> None:
    clock = Stopwatch()
    time.sleep(0.02)
    first = clock.lap()
    second = clock.lap()
    assert first >= 15.0
    assert 0.0 <= second < first
