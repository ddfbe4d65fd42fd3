"""Strength: the blend of source and generator output, its routing, the worker and the audit.

The worker test runs the node's ``enhance`` path in process (ingest → claim →
infer → blend → derive → audit row → ``jobs show``) on a real SQLite database
with a tiny ONNX model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_factory import DX_PRESENTATION, save, xray
from onnx_models import make_smoothing_model
from sqlalchemy import inspect, select, text

from dicom_node.config import Config, StorageSettings, parse_config
from dicom_node.dataset_info import inspect_file
from dicom_node.db import DerivedInstance, Job, make_engine
from dicom_node.derive import OUTPUT_BITS
from dicom_node.inference import get_enhancer
from dicom_node.ingest import ingest
from dicom_node.jobs_report import format_detail, show_job
from dicom_node.pixels import normalize_dataset, quantize
from dicom_node.routing import enhance_strength, route
from dicom_node.runtime import Runtime
from dicom_node.strength import DEFAULT_STRENGTH, blend, check_strength, format_strength
from dicom_node.worker import process_one

# --------------------------------------------------------------------------- blend


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    source = rng.uniform(0.1, 0.9, size=(17, 23)).astype(np.float32)
    enhanced = np.clip(source + rng.normal(0, 0.05, size=source.shape), 0, 1).astype(np.float32)
    assert not np.array_equal(source, enhanced)
    return source, enhanced


def test_strength_zero_gives_the_source(pair: tuple[np.ndarray, np.ndarray]) -> None:
    source, enhanced = pair
    out = blend(source, enhanced, 0.0)
    assert out.dtype == np.float32 and out.shape == source.shape
    np.testing.assert_array_equal(out, source)
    assert out is not source  # a copy: changing it leaves the source alone


def test_strength_one_gives_the_generator_output(pair: tuple[np.ndarray, np.ndarray]) -> None:
    source, enhanced = pair
    np.testing.assert_array_equal(blend(source, enhanced, 1.0), enhanced)
    np.testing.assert_array_equal(blend(source, enhanced, 1), enhanced)


def test_strength_half_is_halfway(pair: tuple[np.ndarray, np.ndarray]) -> None:
    source, enhanced = pair
    np.testing.assert_allclose(blend(source, enhanced, 0.5), (source + enhanced) / 2, atol=1e-6)
    # Linear in the strength: 0.25 is a quarter of the correction.
    np.testing.assert_allclose(
        blend(source, enhanced, 0.25) - source, 0.25 * (enhanced - source), atol=1e-6
    )


def test_blend_refuses_bad_input(pair: tuple[np.ndarray, np.ndarray]) -> None:
    source, enhanced = pair
    with pytest.raises(ValueError, match="differ in shape"):
        blend(source, enhanced[:-1], 0.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        blend(source, enhanced, 1.01)
    with pytest.raises(TypeError, match="must be a number"):
        blend(source, enhanced, "0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-0.01, 1.5, float("nan"), float("inf")])
def test_check_strength_out_of_range(value: float) -> None:
    with pytest.raises(ValueError, match=r"model\.strength must be from 0 to 1"):
        check_strength(value, "model.strength")


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5]])
def test_check_strength_wrong_type(value: object) -> None:
    with pytest.raises(TypeError, match="must be a number"):
        check_strength(value)


def test_format_strength() -> None:
    assert [format_strength(v) for v in (0.0, 0.8, 1.0, 0.25)] == ["0.00", "0.80", "1.00", "0.25"]
    # More decimals only when two would hide a difference.
    assert format_strength(0.125) == "0.125"


# --------------------------------------------------------------------------- routing


def config(**model: Any) -> Config:
    raw = {
        "model": model,
        "rules": [
            {"name": "soft", "action": "enhance", "modality": ["CR"], "strength": 0.3},
            {"name": "plain", "action": "enhance", "modality": ["DX"]},
            {"name": "rest", "action": "forward"},
        ],
    }
    return parse_config(raw, Path("/srv/node"))


def test_route_gives_the_rules_strength_or_the_models(tmp_path: Path) -> None:
    cfg = config(strength=0.6)
    cr, _ = inspect_file(save(xray(), tmp_path / "cr.dcm"))
    dx, _ = inspect_file(
        save(xray(sop_class_uid=DX_PRESENTATION, modality="DX"), tmp_path / "dx.dcm")
    )
    ct_like, _ = inspect_file(save(xray(modality="OT"), tmp_path / "ot.dcm"))
    assert (route(cfg, cr, "X").rule, route(cfg, cr, "X").strength) == ("soft", 0.3)
    assert (route(cfg, dx, "X").rule, route(cfg, dx, "X").strength) == ("plain", 0.6)
    # Only an enhance has a strength.
    assert (route(cfg, ct_like, "X").action, route(cfg, ct_like, "X").strength) == ("forward", None)
    assert enhance_strength(cfg, "soft") == 0.3
    assert enhance_strength(cfg, "plain") == 0.6
    # A rule that is gone (configuration changed since routing) or none: [model] strength.
    assert enhance_strength(cfg, "renamed") == 0.6
    assert enhance_strength(cfg, None) == 0.6
    assert enhance_strength(config(), "plain") == DEFAULT_STRENGTH


# --------------------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smoothing_model(tmp_path_factory.mktemp("m") / "m.onnx", name="strength-test")


@pytest.fixture
def runtime(tmp_path: Path, model_path: Path) -> Iterator[Runtime]:
    raw = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "model": {"path": str(model_path), "strength": 0.5},
        # Whole-image pixel comparisons below: no burned-in label (test_derive covers it).
        "output": {"label": "none"},
        "rules": [
            # The rule's strength wins over [model] strength...
            {"name": "cr-unchanged", "action": "enhance", "modality": ["CR"], "strength": 0.0},
            # ...and a rule without one uses [model] strength.
            {"name": "dx-half", "action": "enhance", "modality": ["DX"]},
        ],
    }
    rt = Runtime.create(parse_config(raw, tmp_path))
    yield rt
    rt.close()


def _receive(runtime: Runtime, path: Path) -> int:
    info, _ = inspect_file(path)
    result = ingest(runtime, path.read_bytes(), info, "MODALITY")
    assert result.outcome == "stored" and result.job_id is not None
    return result.job_id


def test_the_worker_applies_the_rules_strength_and_records_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    cr_source = xray(rows=96, cols=80, bits=12)
    dx_source = xray(rows=96, cols=80, bits=14, sop_class_uid=DX_PRESENTATION, modality="DX")
    cr_job = _receive(runtime, save(cr_source, tmp_path / "cr.dcm"))
    dx_job = _receive(runtime, save(dx_source, tmp_path / "dx.dcm"))
    assert process_one(runtime) and process_one(runtime)

    with runtime.session() as session:
        for job_id in (cr_job, dx_job):
            job = session.get(Job, job_id)
            assert job is not None and job.state == "done", (job_id, job and job.error)
        rows = {row.job_id: row for row in session.scalars(select(DerivedInstance)).all()}
    assert set(rows) == {cr_job, dx_job}

    # Strength 0: a derived object whose pixels are the normalised source's.
    cr_derived = pydicom.dcmread(rows[cr_job].path)
    cr_image = normalize_dataset(cr_source)
    np.testing.assert_array_equal(cr_derived.pixel_array, quantize(cr_image.pixels, OUTPUT_BITS))
    assert cr_derived.DerivationDescription.endswith(", strength 0.00")
    assert rows[cr_job].strength == 0.0

    # [model] strength 0.5: halfway between the source and the generator's output.
    dx_derived = pydicom.dcmread(rows[dx_job].path)
    dx_image = normalize_dataset(dx_source)
    generated, _ = get_enhancer(runtime.config.model).enhance(dx_image.pixels)
    expected = quantize(blend(dx_image.pixels, generated, 0.5), OUTPUT_BITS)
    np.testing.assert_array_equal(dx_derived.pixel_array, expected)
    assert not np.array_equal(expected, quantize(dx_image.pixels, OUTPUT_BITS))
    assert dx_derived.DerivationDescription.endswith(", strength 0.50")
    assert rows[dx_job].strength == 0.5

    # `jobs show` reports it, as JSON and as text.
    detail = show_job(runtime, cr_job)
    assert detail is not None
    (derived,) = detail["derived"]
    assert derived["strength"] == 0.0
    assert derived["model_sha256"] == get_enhancer(runtime.config.model).metadata.sha256
    assert "    strength: 0.00" in format_detail(detail).splitlines()


# --------------------------------------------------------------------------- schema


def test_an_older_database_gets_the_strength_column(tmp_path: Path) -> None:
    storage = StorageSettings(data_dir=tmp_path)
    engine = make_engine(storage)
    with engine.begin() as conn:  # as the node left it before migrations and before strength
        conn.execute(text("ALTER TABLE derived_instances DROP COLUMN strength"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN shadow"))  # added by revision 0002
        conn.execute(text("DROP TABLE alembic_version"))
    assert "strength" not in {c["name"] for c in inspect(engine).get_columns("derived_instances")}
    engine.dispose()

    engine = make_engine(storage)
    columns = {c["name"]: c for c in inspect(engine).get_columns("derived_instances")}
    assert columns["strength"]["nullable"]
    engine.dispose()
    # Idempotent: a third start changes nothing and does not fail.
    make_engine(storage).dispose()
