"""Where the time of one enhancement went: :class:`StageTimings`, one vocabulary.

The stages, in the order an instance goes through them:

``queue_wait``
    From the job's creation to its claim by a worker (worker path only).
``read``
    Reading the file: a DICOM file up to the parsed dataset, pixel data not
    decoded. For a PNG/TIFF/JPEG (``dicom-node enhance``) one Pillow call
    reads, decodes and normalises, so ``read`` covers all three there.
``decode``
    Decoding the pixel data (any transfer syntax) to the stored values.
``normalise``
    Modality LUT, value range and MONOCHROME1 inversion to the model's
    convention (:mod:`dicom_node.pixels`).
``infer``
    Padding to the model's size multiple, the model run(s) on the whole
    image or its ``tiles``, blending of the tiles, cropping back.
``blend``
    Applying the strength (:mod:`dicom_node.strength`).
``derive``
    Building the derived object with its provenance (:mod:`dicom_node.derive`).
``encode``
    Serialising it: DICOM Part 10 bytes (or PNG bytes for image files).
``write``
    Writing those bytes atomically (spool or output directory).

``tiles`` is a count, not a time: how many model runs ``infer`` made
(1 for a whole image).

The job's timings in the database (``jobs show``), the ``derived.written``
log line and ``dicom-node enhance``'s summary line all use these names and
:meth:`StageTimings.as_dict`. Two more keys appear in the stored timings,
added by their own modules: ``process`` (the worker's wall time for the
whole processor call, :mod:`dicom_node.worker`) on the job, and
``send_<destination>`` (the C-STORE of one derived instance to that
destination, :mod:`dicom_node.dispatch`) on the derived instance's row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any

STAGES = (
    "queue_wait",
    "read",
    "decode",
    "normalise",
    "infer",
    "blend",
    "derive",
    "encode",
    "write",
)
"""The stage names, in pipeline order; each is a ``<stage>_ms`` field of :class:`StageTimings`."""


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent in each stage (None: the stage did not run) and the tile count.

    Raises
    ------
    ValueError
        If a duration is negative or `tiles` is below 1.
    """

    queue_wait_ms: float | None = None
    read_ms: float | None = None
    decode_ms: float | None = None
    normalise_ms: float | None = None
    infer_ms: float | None = None
    blend_ms: float | None = None
    derive_ms: float | None = None
    encode_ms: float | None = None
    write_ms: float | None = None
    tiles: int | None = None

    def __post_init__(self) -> None:
        for stage in STAGES:
            value = getattr(self, f"{stage}_ms")
            if value is not None and not value >= 0:
                raise ValueError(f"{stage}_ms must be at least 0; got {value!r}.")
        if self.tiles is not None and self.tiles < 1:
            raise ValueError(f"tiles must be at least 1; got {self.tiles!r}.")

    def as_dict(self) -> dict[str, float]:
        """Stage name → milliseconds, for the stages that ran, in pipeline order.

        This is what the job's timings in the database hold (``jobs show``
        prints them); the tile count is not a duration and is not included.
        """
        values = ((stage, getattr(self, f"{stage}_ms")) for stage in STAGES)
        return {stage: float(value) for stage, value in values if value is not None}

    def log_fields(self) -> dict[str, Any]:
        """Log fields: ``<stage>_ms`` for the stages that ran, and ``tiles`` when known."""
        out: dict[str, Any] = {f"{stage}_ms": value for stage, value in self.as_dict().items()}
        if self.tiles is not None:
            out["tiles"] = self.tiles
        return out

    @property
    def total_ms(self) -> float:
        """The sum of the stages that ran, queue wait excluded."""
        return sum(v for stage, v in self.as_dict().items() if stage != "queue_wait")

    def merged(self, other: StageTimings) -> StageTimings:
        """These timings with every stage (and the tile count) `other` has set taken from it."""
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if getattr(other, f.name) is not None
        }
        return replace(self, **changes)

    def with_stage(self, stage: str, ms: float) -> StageTimings:
        """These timings with `stage` set to `ms` milliseconds.

        Raises
        ------
        ValueError
            If `stage` is not one of :data:`STAGES` or `ms` is negative.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}.")
        changes: dict[str, Any] = {f"{stage}_ms": ms}
        return replace(self, **changes)


class Stopwatch:
    """Consecutive stage durations: each :meth:`lap` is the time since the previous one.

    Examples
    --------
    >>> clock = Stopwatch()
    >>> clock.lap() >= 0
    True
    """

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Milliseconds since the previous lap (or since the stopwatch was made)."""
        now = time.perf_counter()
        elapsed = (now - self._last) * 1000
        self._last = now
        return elapsed
