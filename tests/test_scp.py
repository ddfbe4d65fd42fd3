"""The C-STORE / C-ECHO SCP against DCMTK's echoscu and storescu (and a pynetdicom SCU).

Covers: echo, reception persisted before success and visible in ``jobs list``,
bytes stored as received for every accepted transfer syntax (a dcmcjpeg
JPEG-Lossless copy of the real image included), association policy (calling
and called AE titles, max_associations) with the proper A-ASSOCIATE-RJ
reasons and a logged reason, idempotent re-sends, refused non-conformant datasets, and the
structured, patient-free log lines.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from helpers.dicom_files import (
    RG1_PATIENT_ID,
    RG1_PATIENT_NAME,
    SampleFile,
    dataset_bytes,
    dcmtk_wire_dataset,
    describe,
    write_copies,
)
from helpers.peers import (
    DCMCJPEG,
    DCMCJPLS,
    DCMCONV,
    DCMCRLE,
    NodeProcess,
    echoscu,
    require_executable,
    storescu,
    wait_until,
)
from helpers.scu import associate, rejection_of, store
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

pytestmark = pytest.mark.network

NodeFactory = Callable[..., NodeProcess]

# A-ASSOCIATE-RJ values, PS3.8 9.3.4.
REJECTED_PERMANENT, REJECTED_TRANSIENT = 1, 2
SOURCE_SERVICE_USER, SOURCE_PROVIDER_PRESENTATION = 1, 3
REASON_CALLING_AET_NOT_RECOGNISED, REASON_CALLED_AET_NOT_RECOGNISED = 3, 7
REASON_LOCAL_LIMIT_EXCEEDED = 2


def instance_rows(node: NodeProcess) -> list[dict[str, Any]]:
    return node.sql(
        "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
        "calling_aet FROM instances ORDER BY id"
    )


def assert_stored_as_sent(node: NodeProcess, sample: SampleFile, transfer_syntax: str) -> None:
    """One row for the instance; its spool file holds exactly the dataset bytes that were sent."""
    rows = [r for r in instance_rows(node) if r["sop_instance_uid"] == sample.sop_instance_uid]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["transfer_syntax_uid"] == transfer_syntax
    stored = Path(row["path"]).read_bytes()
    assert row["size_bytes"] == len(stored)
    assert Path(row["path"]).parent.parent == node.spool_dir / "received"
    # The node keeps exactly the bytes DCMTK put on the wire (no decode / re-encode).
    assert dataset_bytes(stored) == dcmtk_wire_dataset(sample.path)
    meta = pydicom.dcmread(row["path"], stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.MediaStorageSOPInstanceUID == sample.sop_instance_uid


# --------------------------------------------------------------------------- echo and store


def test_echoscu_is_answered(node: NodeFactory) -> None:
    n = node()
    result = echoscu(n.port, called="NODE", calling="ECHOER")
    assert result.returncode == 0, result.stderr
    n.wait_for_log("echo.received")
    assert "calling_aet=ECHOER" in n.log_text


def test_storescu_rg1_is_persisted_and_listed(node: NodeFactory, rg1_path: Path) -> None:
    n = node()
    result = storescu(n.port, [rg1_path], calling="MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    sample = describe(rg1_path)
    # Success was answered only after the row and the file existed: check both at once.
    assert_stored_as_sent(n, sample, "1.2.840.10008.1.2.1")
    assert instance_rows(n)[0]["calling_aet"] == "MODALITY"
    assert instance_rows(n)[0]["size_bytes"] > 7_000_000

    jobs = n.wait_jobs(1)  # forward with no destination: done at once
    assert [j["sop_instance_uid"] for j in jobs] == [sample.sop_instance_uid]

    listed = n.cli("jobs", "list")
    assert listed.returncode == 0, listed.stderr
    assert sample.sop_instance_uid in listed.stdout
    assert "forward" in listed.stdout
    as_json = json.loads(n.cli("jobs", "list", "--json").stdout)
    assert [(r["sop_instance_uid"], r["state"]) for r in as_json] == [
        (sample.sop_instance_uid, "done")
    ]


def test_jpeg_lossless_copy_is_accepted_and_kept_compressed(
    node: NodeFactory, rg1_jpeg_lossless: SampleFile
) -> None:
    n = node()
    # -xs proposes JPEG Lossless SV1 (the syntax dcmcjpeg wrote) besides the uncompressed ones.
    result = storescu(n.port, [rg1_jpeg_lossless.path], args=["-xs"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert_stored_as_sent(n, rg1_jpeg_lossless, "1.2.840.10008.1.2.4.70")
    n.wait_jobs(1)


def _eight_bit(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    pixels = (out.pixel_array >> 7).astype(np.uint8)
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    out.PixelData = pixels.tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        del out[keyword]
    return out


def _convert(sample: SampleFile, target: Path, how: str, small_dataset: Dataset) -> None:
    """Re-encode `sample` with DCMTK (or pydicom for JPEG 2000) keeping its UIDs."""
    tools = {
        "implicit": [DCMCONV, "+ti"],
        "deflated": [DCMCONV, "+td"],
        "rle": [DCMCRLE],
        "jpeg-ls": [DCMCJPLS],
        "jpeg-lossless": [DCMCJPEG, "+e1", "+un"],
        "jpeg-baseline": [DCMCJPEG, "+eb", "+un"],
    }
    if how == "jpeg2000":
        ds = pydicom.dcmread(sample.path)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(target, enforce_file_format=True)
        return
    source = sample.path
    if how == "jpeg-baseline":  # baseline JPEG holds 8-bit samples only
        ds = _eight_bit(pydicom.dcmread(sample.path))
        source = target.with_suffix(".8bit.dcm")
        ds.save_as(source, enforce_file_format=True)
    tool = require_executable(tools[how][0], "dcmtk")
    subprocess.run([tool, *tools[how][1:], str(source), str(target)], check=True, timeout=60)


TRANSFER_SYNTAXES = [
    # (conversion, storescu proposal option, transfer syntax UID)
    ("implicit", "-xi", "1.2.840.10008.1.2"),
    ("deflated", "-xd", "1.2.840.10008.1.2.1.99"),
    ("rle", "-xr", "1.2.840.10008.1.2.5"),
    ("jpeg-ls", "-xt", "1.2.840.10008.1.2.4.80"),
    ("jpeg-lossless", "-xs", "1.2.840.10008.1.2.4.70"),
    ("jpeg-baseline", "-xy", "1.2.840.10008.1.2.4.50"),
    ("jpeg2000", "-xv", "1.2.840.10008.1.2.4.90"),
]


def test_every_usual_transfer_syntax_is_stored_as_received(
    node: NodeFactory,
    small_copies: Callable[..., list[SampleFile]],
    tmp_path: Path,
    small_dataset: Dataset,
) -> None:
    n = node()
    samples = small_copies(len(TRANSFER_SYNTAXES))
    for (how, option, ts), sample in zip(TRANSFER_SYNTAXES, samples, strict=True):
        target = tmp_path / f"{how}.dcm"
        _convert(sample, target, how, small_dataset)
        converted = describe(target)
        assert converted.sop_instance_uid == sample.sop_instance_uid
        assert str(pydicom.dcmread(target).file_meta.TransferSyntaxUID) == ts
        # One association per syntax: storescu proposes one compressed syntax at a time.
        result = storescu(n.port, [target], args=[option])
        assert result.returncode == 0, f"{how}: {result.stdout}{result.stderr}"
        assert_stored_as_sent(n, converted, ts)
    n.wait_jobs(len(TRANSFER_SYNTAXES))


def test_resending_an_instance_is_idempotent(node: NodeFactory, rg1_path: Path) -> None:
    n = node()
    for _ in range(2):
        result = storescu(n.port, [rg1_path])
        assert result.returncode == 0, result.stdout + result.stderr
    n.wait_jobs(1)
    assert len(instance_rows(n)) == 1
    assert len(n.jobs()) == 1
    assert len(n.spool_files()) == 1  # the second copy is not kept either
    n.wait_for_log("instance.duplicate")


# --------------------------------------------------------------------------- association policy


def test_disallowed_calling_aet_is_rejected(node: NodeFactory, rg1_path: Path) -> None:
    n = node(node={"allowed_calling_aets": ["MODALITY", "CT01"]})

    refused = echoscu(n.port, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr

    refused_store = storescu(n.port, [rg1_path], calling="INTRUDER")
    assert refused_store.returncode != 0
    assert instance_rows(n) == []

    assoc = associate(n.port, calling="INTRUDER")
    assert rejection_of(assoc) == (
        REJECTED_PERMANENT,
        SOURCE_SERVICE_USER,
        REASON_CALLING_AET_NOT_RECOGNISED,
    )
    n.wait_for_log("association.rejected")
    rejected = n.log_events("association.rejected")
    assert [r["reason"] for r in rejected] == ["calling AE title not in allowed_calling_aets"] * 3
    assert {r["calling_aet"] for r in rejected} == {"INTRUDER"}
    assert all(r["peer"].startswith("127.0.0.1:") for r in rejected)

    allowed = storescu(n.port, [rg1_path], calling="MODALITY")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert len(instance_rows(n)) == 1


def test_wrong_called_aet_is_rejected(node: NodeFactory) -> None:
    n = node()
    refused = echoscu(n.port, called="SOMEONE_ELSE")
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
    assoc = associate(n.port, called="SOMEONE_ELSE")
    assert rejection_of(assoc) == (
        REJECTED_PERMANENT,
        SOURCE_SERVICE_USER,
        REASON_CALLED_AET_NOT_RECOGNISED,
    )
    wait_until(lambda: len(n.log_events("association.rejected")) == 2, 10, "two rejection lines")
    for line in n.log_events("association.rejected"):
        assert line["reason"] == "called AE title is not this node's"
        assert line["called_aet"] == "SOMEONE_ELSE"
        assert line["peer"].startswith("127.0.0.1:")


def test_max_associations_is_honoured(node: NodeFactory) -> None:
    n = node(node={"max_associations": 2})
    held = [associate(n.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = associate(n.port)
        assert rejection_of(extra) == (
            REJECTED_TRANSIENT,
            SOURCE_PROVIDER_PRESENTATION,
            REASON_LOCAL_LIMIT_EXCEEDED,
        )
        assert echoscu(n.port).returncode != 0
    finally:
        for assoc in held:
            assoc.release()
    again = associate(n.port)
    assert again.is_established
    again.release()
    reasons = {r["reason"] for r in n.log_events("association.rejected")}
    assert reasons == {"association limit reached (max_associations 2)"}


# --------------------------------------------------------------------------- what is refused


def test_non_conformant_datasets_are_refused_and_not_kept(
    node: NodeFactory, small_dataset: Dataset, tmp_path: Path
) -> None:
    n = node()
    truncated = copy.deepcopy(small_dataset)
    truncated.SOPInstanceUID = generate_uid()
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    no_study = copy.deepcopy(small_dataset)
    no_study.SOPInstanceUID = generate_uid()
    del no_study.StudyInstanceUID
    good = write_copies(small_dataset, tmp_path / "good", 1)[0]
    statuses = store(n.port, [truncated, no_study, good.path])
    # 0xA900: the dataset does not match what its attributes say; the last one is fine.
    assert statuses == [0xA900, 0xA900, 0x0000]
    assert [r["sop_instance_uid"] for r in instance_rows(n)] == [good.sop_instance_uid]
    assert len(n.spool_files()) == 1
    assert len(n.log_events("instance.refused")) == 2


# --------------------------------------------------------------------------- logs


def test_one_structured_line_per_event_without_patient_data(
    node: NodeFactory, rg1_path: Path
) -> None:
    n = node()
    assert storescu(n.port, [rg1_path], calling="MODALITY").returncode == 0
    n.wait_jobs(1)
    n.wait_for_log("association.released")
    sop = describe(rg1_path).sop_instance_uid

    accepted = n.log_events("association.accepted")
    assert accepted and accepted[0]["calling_aet"] == "MODALITY"
    stored = n.log_events("instance.stored")
    assert len(stored) == 1
    assert stored[0]["sop_instance_uid"] == sop
    assert {"study_instance_uid", "series_instance_uid", "total_ms", "job_id"} <= set(stored[0])
    released = n.log_events("association.released")
    assert released[0]["stored"] == "1" and float(released[0]["duration_ms"]) > 0
    processed = n.log_events("job.processed")
    assert processed and processed[0]["sop_instance_uid"] == sop

    log = n.log_text
    assert RG1_PATIENT_NAME not in log
    assert "CompressedSamples" not in log
    assert f"={RG1_PATIENT_ID}" not in log and f"{RG1_PATIENT_ID} " not in log
