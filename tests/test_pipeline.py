"""The pipeline as one function: RG1 through a tiny ONNX model, and both callers agree.

The worker's ``enhance`` job and ``dicom-node enhance`` both run
:func:`dicom_node.pipeline.enhance_instance`; these tests hold the function
to its contract (valid object, stages timed, no side effects) and check that
the object the worker spools and the file the offline command writes are
the same object.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import RG1, rgb_secondary_capture, save
from onnx_models import make_smoothing_model
from pydicom.dataset import Dataset
from sqlalchemy import select
from test_derive import dciodvfy_errors

from dicom_node.config import ModelSettings, OutputSettings, parse_config
from dicom_node.dataset_info import inspect_file
from dicom_node.db import DerivedInstance, Job
from dicom_node.derive import OUTPUT_BITS
from dicom_node.errors import PermanentError
from dicom_node.inference import Enhancer, get_enhancer
from dicom_node.ingest import ingest
from dicom_node.label import label_lines, place
from dicom_node.offline import enhance_dicom_file
from dicom_node.pipeline import EnhancedInstance, enhance_instance
from dicom_node.pixels import PixelDataError, normalize_dataset, quantize
from dicom_node.provenance import derived_uids, produced_by_node
from dicom_node.runtime import Runtime
from dicom_node.timings import STAGES
from dicom_node.worker import process_one

PIPELINE_STAGES = {"read", "decode", "normalise", "infer", "blend", "derive", "encode"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smoothing_model(tmp_path_factory.mktemp("m") / "m.onnx", name="pipeline-test")


@pytest.fixture(scope="module")
def enhancer(model_path: Path) -> Enhancer:
    return get_enhancer(ModelSettings(path=model_path))


@pytest.fixture(scope="module")
def rg1_result(enhancer: Enhancer) -> EnhancedInstance:
    return enhance_instance(RG1, enhancer, OutputSettings(), strength=0.7)


def test_rg1_gives_a_valid_derived_object(
    rg1_result: EnhancedInstance, enhancer: Enhancer, tmp_path: Path
) -> None:
    path = tmp_path / "rg1_derived.dcm"
    path.write_bytes(rg1_result.data)
    assert dciodvfy_errors(path) == []
    derived = pydicom.dcmread(path)
    source = pydicom.dcmread(RG1)
    assert (derived.Rows, derived.Columns) == (source.Rows, source.Columns)
    assert derived.SOPInstanceUID == rg1_result.derived.SOPInstanceUID
    uids = derived_uids(source, enhancer.metadata.sha256, 0.7)
    assert (derived.SeriesInstanceUID, derived.SOPInstanceUID) == (
        uids.series_instance_uid,
        uids.sop_instance_uid,
    )
    assert derived.DerivationDescription.endswith("strength 0.70")
    assert produced_by_node(derived) and not produced_by_node(source)
    assert rg1_result.strength == 0.7
    # The pixels are the blend of the normalised source and the model's output.
    image = normalize_dataset(source)
    np.testing.assert_array_equal(rg1_result.image.pixels, image.pixels)
    generated, _ = enhancer.enhance(image.pixels)
    expected = quantize(image.pixels + np.float32(0.7) * (generated - image.pixels), OUTPUT_BITS)
    # Outside the burned-in AI label (placed on those pixels), exactly that blend.
    label = place(expected, label_lines(enhancer.metadata.name, enhancer.metadata.version))
    outside = ~label.full_mask(expected.shape)
    difference = derived.pixel_array.astype(np.int64) - expected
    assert np.abs(difference[outside]).max() <= 1
    assert np.abs(difference[~outside]).max() > 1000  # the label is there
    assert not np.array_equal(derived.pixel_array, quantize(image.pixels, OUTPUT_BITS))


def test_every_stage_is_timed(rg1_result: EnhancedInstance) -> None:
    timings = rg1_result.timings
    stages = timings.as_dict()
    assert set(stages) == PIPELINE_STAGES
    assert list(stages) == [stage for stage in STAGES if stage in stages]  # pipeline order
    assert all(ms >= 0 for ms in stages.values())
    assert stages["infer"] > 0 and stages["decode"] > 0  # RG1 is JPEG 2000: decoding is real
    assert timings.tiles == 1
    # Writing (and the queue) are the caller's.
    assert timings.write_ms is None and timings.queue_wait_ms is None


def test_a_dataset_in_gives_the_same_object_without_a_read_stage(
    rg1_result: EnhancedInstance, enhancer: Enhancer
) -> None:
    from_dataset = enhance_instance(pydicom.dcmread(RG1), enhancer, OutputSettings(), strength=0.7)
    assert "read" not in from_dataset.timings.as_dict()
    assert set(from_dataset.timings.as_dict()) == PIPELINE_STAGES - {"read"}
    assert from_dataset.derived.SOPInstanceUID == rg1_result.derived.SOPInstanceUID
    np.testing.assert_array_equal(from_dataset.derived.pixel_array, rg1_result.derived.pixel_array)
    # data is derived, encoded: reading it back gives the same object.
    again = pydicom.dcmread(io.BytesIO(from_dataset.data))
    np.testing.assert_array_equal(again.pixel_array, from_dataset.derived.pixel_array)


def test_the_source_file_is_left_alone(enhancer: Enhancer, tmp_path: Path) -> None:
    copy = tmp_path / "rg1.dcm"
    copy.write_bytes(RG1.read_bytes())
    enhance_instance(copy, enhancer, OutputSettings(), strength=1.0)
    assert copy.read_bytes() == RG1.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rg1.dcm"]


def test_failures_are_the_documented_errors(enhancer: Enhancer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="missing from the spool"):
        enhance_instance(tmp_path / "gone.dcm", enhancer, OutputSettings())
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(PermanentError, match="cannot be read as DICOM"):
        enhance_instance(junk, enhancer, OutputSettings())
    rgb = save(rgb_secondary_capture(), tmp_path / "rgb.dcm")
    with pytest.raises(PixelDataError, match="Photometric Interpretation"):
        enhance_instance(rgb, enhancer, OutputSettings())
    with pytest.raises(ValueError, match="from 0 to 1"):
        enhance_instance(RG1, enhancer, OutputSettings(), strength=1.2)


# ----------------------------------------------------- the worker and offline agree


@pytest.fixture
def runtime(tmp_path: Path, model_path: Path) -> Iterator[Runtime]:
    raw = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "model": {"path": str(model_path), "strength": 0.6},
        "rules": [{"name": "chest", "action": "enhance", "modality": ["CR", "DX"]}],
    }
    rt = Runtime.create(parse_config(raw, tmp_path))
    yield rt
    rt.close()


def test_worker_and_offline_make_the_same_object(runtime: Runtime, tmp_path: Path) -> None:
    source_path = tmp_path / "rg1.dcm"
    source_path.write_bytes(RG1.read_bytes())
    info, _ = inspect_file(source_path)
    stored = ingest(runtime, source_path.read_bytes(), info, "MODALITY")
    assert stored.job_id is not None
    assert process_one(runtime)
    with runtime.session() as session:
        job = session.get(Job, stored.job_id)
        assert job is not None and job.state == "done", job and job.error
        job_timings = dict(job.timings or {})
        (row,) = session.scalars(select(DerivedInstance)).all()
        row_timings = dict(row.timings or {})
        spooled = Path(row.path)
    from_worker: Dataset = pydicom.dcmread(spooled)

    out = tmp_path / "offline"
    out.mkdir()
    enhancer = get_enhancer(runtime.config.model)
    summary = enhance_dicom_file(source_path, out, enhancer, runtime.config)
    from_offline = pydicom.dcmread(out / "rg1.dcm")

    for keyword in (
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "SeriesDescription",
        "SeriesNumber",
        "DerivationDescription",
        "ImageComments",
        "WindowCenter",
        "WindowWidth",
    ):
        assert from_worker.get(keyword) == from_offline.get(keyword), keyword
    np.testing.assert_array_equal(from_worker.pixel_array, from_offline.pixel_array)
    assert from_worker.DerivationDescription.endswith("strength 0.60")

    # One vocabulary: the job's stored timings, the audit row and the summary line.
    expected = {"queue_wait", *PIPELINE_STAGES, "write"}
    assert expected <= set(job_timings) <= expected | {"process"}
    assert set(row_timings) >= expected
    for stage in (*sorted(PIPELINE_STAGES), "write"):
        assert f" {stage} " in summary, stage
    assert "tiles 1" in summary
