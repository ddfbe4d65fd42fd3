"""The sections of the configuration: frozen pydantic dataclasses, one per TOML table.

:func:`settings` makes a class a frozen pydantic dataclass (``extra="forbid"``)
whose constructor raises the node's one-line errors, so a setting built in
code is checked like one read from the file (see :mod:`dicom_node.config`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, dataclass_transform

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from dicom_node.config_errors import setting_error
from dicom_node.config_types import (
    DEFAULT_STRENGTH,
    AETitle,
    AETitles,
    Bool,
    DatabaseUrl,
    DataDir,
    Float,
    Host,
    Int,
    Level,
    ModelPath,
    Name,
    Port,
    Strength,
    Template,
    bad_value,
)

MODEL_PATH_SOURCES = ("config", "installed", "command line")
"""Where an explicit :attr:`ModelSettings.path` can come from."""

INTERNAL_FIELDS = frozenset({"source", "path_source"})
"""Fields set by the node, never by the file or the environment."""

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(Field, field))
def settings(cls: type[_T]) -> type[_T]:
    """A frozen pydantic dataclass whose constructor raises one-line setting errors."""
    built: Any = dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    init: Callable[..., None] = built.__init__

    names = [f.name for f in dataclasses.fields(built) if f.init]

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) <= len(names):  # by name, so that an error names the field
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
            args = ()
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise setting_error(exc, built, INTERNAL_FIELDS) from None

    built.__init__ = checked_init
    return cast(type[_T], built)


@settings
class NodeSettings:
    """The listening application entity and the limits of its network edge.

    `max_associations` counts negotiated associations. A connection that has
    not yet sent its whole A-ASSOCIATE-RQ is *pending*: it counts against
    `max_pending_connections` and, per remote address,
    `max_connections_per_host`, and the oldest pending connection is dropped
    when either is reached; its A-ASSOCIATE-RQ must be complete within
    `acse_timeout`. `network_timeout` is the longest silence on an accepted
    connection (in the middle of a PDU, or between messages of an
    association). `max_pdu_size` is the Maximum Length Received the node
    announces and enforces: a longer PDU is answered with an A-ABORT. Its
    default, 1 MiB, moves a 30 MB chest image in about 30 PDUs (per-PDU cost
    negligible) while a peer cannot make the node buffer more than 1 MiB
    beyond what it has actually received (see :mod:`dicom_node.connection_limits`).
    """

    ae_title: AETitle = "CXR_ENHANCE"
    host: Host = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aets: AETitles = ()
    max_associations: Int = Field(default=10, ge=1, le=1000)
    max_pending_connections: Int = Field(default=16, ge=1, le=1000)
    max_connections_per_host: Int = Field(default=8, ge=1, le=1000)
    max_pdu_size: Int = Field(default=1024 * 1024, ge=16384, le=64 * 1024 * 1024)
    acse_timeout: Float = Field(default=30.0, ge=0.1)
    dimse_timeout: Float = Field(default=60.0, ge=0.1)
    network_timeout: Float = Field(default=30.0, ge=0.1)


@settings
class StorageSettings:
    """Where received and derived instances and the job database live."""

    data_dir: DataDir = Field(default=Path("var"), validate_default=True)
    database_url: DatabaseUrl = ""
    retention_days: Int = Field(default=30, ge=0, le=36500)
    sqlite_busy_timeout: Float = Field(default=5.0, ge=0.0)

    @property
    def spool_dir(self) -> Path:
        """Directory holding received and derived DICOM files."""
        return self.data_dir / "spool"

    @property
    def effective_database_url(self) -> str:
        """`database_url`, or the SQLite database under `data_dir` when it is empty."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'node.sqlite3').resolve()}"


@settings
class Destination:
    """A DICOM peer (typically the PACS) that receives what the node sends."""

    name: Name
    ae_title: AETitle
    host: Host
    port: Port
    max_batch: Int = Field(default=50, ge=1, le=10000)


@settings
class JobSettings:
    """Retry policy, leases and polling of the job queue."""

    max_attempts: Int = Field(default=10, ge=1, le=1000)
    retry_base_delay: Float = Field(default=5.0, ge=0.0)
    retry_max_delay: Float = Field(default=300.0, ge=0.0)
    retry_jitter: Float = Field(default=0.2, ge=0.0, le=1.0)
    lease_seconds: Float = Field(default=120.0, ge=1.0)
    poll_interval: Float = Field(default=2.0, ge=0.05)
    workers: Int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _delays(self) -> JobSettings:
        if self.retry_max_delay < self.retry_base_delay:
            raise bad_value(
                f"is smaller than {{prefix}}retry_base_delay ({self.retry_base_delay}).",
                field="retry_max_delay",
                value=self.retry_max_delay,
            )
        return self


@settings
class ModelSettings:
    """The ONNX generator and how it runs.

    `path` is None for the bundled model. `path_source` says where a set
    `path` came from: ``"config"`` (the file or an environment override),
    ``"installed"`` (``dicom-node model install``, resolved by
    :func:`dicom_node.model_store.resolve_installed_model`) or ``"command
    line"`` (``--model``); it is ignored while `path` is None. :attr:`source`
    combines both. `strength` is the share of the generator's correction
    applied (see :mod:`dicom_node.strength`), unless the matching rule sets
    its own.

    Raises
    ------
    TypeError
        If a value has the wrong type (`strength` not a number, say).
    ValueError
        If `path_source` is not one of :data:`MODEL_PATH_SOURCES`, `strength`
        is outside [0, 1], `tile_size` is not a multiple of 256 or
        `tile_overlap` is not less than half of it.
    """

    path: ModelPath = None
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    device_id: Int = Field(default=0, ge=0, le=63)
    tile_size: Int = Field(default=1024, ge=256, le=8192)
    tile_overlap: Int = Field(default=128, ge=0, le=2048)
    max_whole_pixels: Int = Field(default=2304 * 2304, ge=256 * 256)
    max_pixels: Int = Field(default=4096 * 4096, ge=64 * 64)
    """The most pixels (Rows × Columns × frames) an image may declare; a larger one is
    refused from its header, before decoding (:mod:`dicom_node.pixel_bounds`)."""
    warmup: Bool = True
    path_source: Literal["config", "installed", "command line"] = "config"
    strength: Strength = DEFAULT_STRENGTH
    adapt_to_noise: Bool = True
    """Scale the strength by the image's measured noise when the model is calibrated
    (:mod:`dicom_node.noise`): a clean image is left as it is."""

    @model_validator(mode="after")
    def _tiles(self) -> ModelSettings:
        if self.tile_size % 256:
            raise bad_value(
                "is not a multiple of 256, which the generator needs.",
                field="tile_size",
                value=self.tile_size,
            )
        if self.tile_overlap * 2 >= self.tile_size:
            raise bad_value(
                f"must be less than half of {{prefix}}tile_size ({self.tile_size}).",
                field="tile_overlap",
                value=self.tile_overlap,
            )
        return self

    @property
    def source(self) -> str:
        """Where the model comes from: ``"bundled"`` when `path` is None, else `path_source`."""
        return "bundled" if self.path is None else self.path_source


@settings
class OutputSettings:
    """How derived series are labelled."""

    series_number_offset: Int = Field(default=1000, ge=1, le=2**31 - 1)
    series_description: Template = "{source} ENHANCED (AI)"
    label: Literal["burned_in", "overlay", "none"] = "burned_in"
    """The visible AI label (:mod:`dicom_node.label`): in the pixels, an overlay plane, or none."""


@settings
class LoggingSettings:
    """Log level and format."""

    level: Level = "INFO"
    format: Literal["text", "json"] = "text"
