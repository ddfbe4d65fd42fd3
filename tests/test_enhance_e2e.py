"""End to end with real peers: DCMTK sends, the node enhances, Orthanc receives.

The node runs as a subprocess with the default chest x-ray rule and the model
shipped in the package; Orthanc is the PACS. What arrives is checked through
Orthanc's REST API and validated with dciodvfy.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_factory import basic_text_sr, ct, rgb_secondary_capture, save, xray
from helpers.peers import DCMCJPEG, NodeProcess, Orthanc, storescu, wait_until
from pydicom.uid import RLELossless
from test_derive import dciodvfy_errors

from dicom_node import PRODUCT_NAME
from dicom_node.config import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING
from dicom_node.inference import bundled_model_path
from dicom_node.model_meta import file_sha256

pytestmark = [pytest.mark.network, pytest.mark.slow]

CHEST_RULE = [
    {
        "name": "chest-xray",
        "action": "enhance",
        "modality": ["CR", "DX"],
        "sop_class_uid": [CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING],
        "body_part_examined": ["CHEST", ""],
    }
]
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def enhancing_node(
    node: Callable[..., NodeProcess], orthanc: Orthanc
) -> Callable[..., NodeProcess]:
    """A node with the default chest rule and the bundled model, sending to Orthanc."""

    def make(**kwargs: Any) -> NodeProcess:
        return node(destinations=[orthanc], rules=CHEST_RULE, **kwargs)

    return make


def test_rg1_comes_back_enhanced_with_provenance(
    enhancing_node: Callable[..., NodeProcess],
    orthanc: Orthanc,
    rg1_path: Path,
    tmp_path: Path,
) -> None:
    node = enhancing_node()
    source = pydicom.dcmread(rg1_path)
    start = time.perf_counter()
    sent = storescu(node.port, [rg1_path], called=node.ae_title)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (instance_id,) = orthanc.wait_for_count(1, timeout=120)
    elapsed = time.perf_counter() - start
    print(f"\nend-to-end storescu start -> derived stored in Orthanc: {elapsed:.2f} s")

    tags = orthanc.tags(instance_id)
    assert tags["SOPClassUID"] == SC_IMAGE_STORAGE
    assert tags["StudyInstanceUID"] == source.StudyInstanceUID
    assert tags["PatientID"] == source.PatientID
    assert tags["AccessionNumber"] == source.AccessionNumber
    assert tags["SeriesInstanceUID"] != source.SeriesInstanceUID
    assert int(tags["SeriesNumber"]) == int(source.SeriesNumber) + 1000
    assert int(tags["InstanceNumber"]) == int(source.InstanceNumber)
    assert (int(tags["Rows"]), int(tags["Columns"])) == (source.Rows, source.Columns)
    assert tags["SeriesDescription"] == "CHEST ENHANCED (AI)"
    assert tags["ImageType"] == "DERIVED\\SECONDARY"
    assert tags["PhotometricInterpretation"] == "MONOCHROME2"
    assert tags["BitsStored"] == "16"
    assert "NOT FOR PRIMARY DIAGNOSIS" in tags["ImageComments"]

    model_sha = file_sha256(bundled_model_path())
    assert model_sha[:16] in tags["DerivationDescription"]
    (source_ref,) = tags["SourceImageSequence"]
    assert source_ref["ReferencedSOPInstanceUID"] == source.SOPInstanceUID
    assert source_ref["ReferencedSOPClassUID"] == source.SOPClassUID
    (purpose,) = source_ref["PurposeOfReferenceCodeSequence"]
    assert (purpose["CodeValue"], purpose["CodingSchemeDesignator"]) == ("121322", "DCM")
    (series_ref,) = tags["ReferencedSeriesSequence"]
    assert series_ref["SeriesInstanceUID"] == source.SeriesInstanceUID
    ours = [
        item
        for item in tags["ContributingEquipmentSequence"]
        if item.get("Manufacturer") == PRODUCT_NAME
    ]
    assert len(ours) == 1
    assert ours[0]["PurposeOfReferenceCodeSequence"][0]["CodeValue"] == "109102"
    assert ours[0]["ContributionDateTime"]

    received = tmp_path / "received.dcm"
    received.write_bytes(orthanc.file(instance_id))
    assert dciodvfy_errors(received) == []
    derived = pydicom.dcmread(received)
    assert derived.pixel_array.shape == source.pixel_array.shape

    # The audit trail: source UIDs, model hash, provider and timings.
    (job,) = node.wait_jobs(1)
    shown = node.cli("jobs", "show", str(job["id"]))
    assert shown.returncode == 0, shown.stderr
    for text in (
        source.SOPInstanceUID,
        derived.SOPInstanceUID,
        model_sha,
        "CPUExecutionProvider",
        "queue_wait",
        "decode",
        "infer",
        "derive",
        "encode",
        "write",
        "send_pacs",
    ):
        assert text in shown.stdout, text

    # Sending the same image again: nothing new, nowhere.
    again = storescu(node.port, [rg1_path], called=node.ae_title)
    assert again.returncode == 0
    time.sleep(2.0)
    assert len(node.jobs()) == 1
    assert orthanc.count() == 1


def test_reprocessing_gives_the_same_uids(
    enhancing_node: Callable[..., NodeProcess], orthanc: Orthanc, rg1_path: Path
) -> None:
    # Two nodes with separate databases (e.g. a re-installation) process the same image
    # with the same model: the PACS sees the same SOP Instance UID, so no duplicate.
    first = enhancing_node(name="first")
    assert storescu(first.port, [rg1_path], called=first.ae_title).returncode == 0
    (instance_id,) = orthanc.wait_for_count(1, timeout=120)
    uid = orthanc.tags(instance_id)["SOPInstanceUID"]
    first.stop()
    second = enhancing_node(name="second")
    assert storescu(second.port, [rg1_path], called=second.ae_title).returncode == 0
    second.wait_jobs(1)
    # The second node did send it (Orthanc answered success to a known UID)...
    (dispatch,) = second.sql("SELECT state, sop_instance_uid FROM dispatches")
    assert dispatch == {"state": "sent", "sop_instance_uid": uid}
    # ...and the PACS still holds one instance.
    assert orthanc.sop_instance_uids() == [uid]


def test_derived_object_sent_back_is_accepted_not_enhanced(
    enhancing_node: Callable[..., NodeProcess],
    orthanc: Orthanc,
    rg1_path: Path,
    tmp_path: Path,
) -> None:
    node = enhancing_node()
    assert storescu(node.port, [rg1_path], called=node.ae_title).returncode == 0
    (instance_id,) = orthanc.wait_for_count(1, timeout=120)
    node.wait_jobs(1)
    derived = tmp_path / "derived.dcm"
    derived.write_bytes(orthanc.file(instance_id))
    # The PACS routes it back, even under a rule that would enhance anything.
    node.stop()
    node.document["rules"] = [{"name": "everything", "action": "enhance"}]
    node.write_config()
    node.start()
    back = storescu(node.port, [derived], called=node.ae_title, calling="PACS")
    assert back.returncode == 0, back.stdout + back.stderr
    stored = node.sql(
        "SELECT sop_instance_uid FROM instances WHERE sop_instance_uid = :uid",
        uid=pydicom.dcmread(derived).SOPInstanceUID,
    )
    assert len(stored) == 1
    time.sleep(1.0)
    assert len(node.jobs()) == 1
    events = node.log_events("instance.stored")
    assert events[-1]["action"] == "ignore"
    assert "produced by this node" in events[-1]["route_reason"]
    assert orthanc.count() == 1


def test_other_objects_are_accepted_and_not_enhanced(
    enhancing_node: Callable[..., NodeProcess], orthanc: Orthanc, tmp_path: Path
) -> None:
    node = enhancing_node()
    files = [
        save(ct(), tmp_path / "ct.dcm"),
        save(rgb_secondary_capture(64, 64), tmp_path / "rgb_sc.dcm"),
        save(basic_text_sr(), tmp_path / "sr.dcm"),
        save(xray(body_part="HAND"), tmp_path / "hand.dcm"),
    ]
    result = storescu(node.port, files, called=node.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = node.sql("SELECT sop_class_uid FROM instances")
    assert len(rows) == 4
    time.sleep(1.0)
    assert node.jobs() == []
    assert orthanc.count() == 0
    actions = [event["action"] for event in node.log_events("instance.stored")]
    assert actions == ["ignore"] * 4


def test_corrupt_pixel_data_fails_the_job_and_the_node_keeps_serving(
    enhancing_node: Callable[..., NodeProcess],
    orthanc: Orthanc,
    rg1_path: Path,
    tmp_path: Path,
) -> None:
    node = enhancing_node()
    bad = xray(rows=256, cols=256, bits=12)
    bad.compress(RLELossless)
    data = bytearray(bad.PixelData)
    data[40:] = b"\x7f" * (len(data) - 40)  # valid item structure, garbage RLE stream
    bad.PixelData = bytes(data)
    bad_path = save(bad, tmp_path / "corrupt.dcm")
    result = storescu(node.port, [bad_path], called=node.ae_title, args=["-xr"])
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = node.wait_jobs(1, states=("failed",))
    assert job["attempts"] == 1
    assert "pixel data cannot be decoded" in job["error"]
    shown = node.cli("jobs", "list", "--state", "failed")
    assert "failed" in shown.stdout and "pixel data cannot be decoded" in shown.stdout
    # The node is still serving, and enhances the next image.
    good = storescu(node.port, [rg1_path], called=node.ae_title)
    assert good.returncode == 0
    orthanc.wait_for_count(1, timeout=120)
    assert node.running


def test_jpeg_lossless_input_gives_the_same_result(
    enhancing_node: Callable[..., NodeProcess],
    orthanc: Orthanc,
    rg1_path: Path,
    tmp_path: Path,
) -> None:
    compressed = tmp_path / "rg1_jpegll.dcm"
    subprocess.run([DCMCJPEG, "+e1", str(rg1_path), str(compressed)], check=True, timeout=120)
    node = enhancing_node()
    result = storescu(node.port, [compressed], called=node.ae_title, args=["-xs"])
    assert result.returncode == 0, result.stdout + result.stderr
    (instance_id,) = orthanc.wait_for_count(1, timeout=120)
    from_compressed = pydicom.dcmread(io.BytesIO(orthanc.file(instance_id)))
    node.wait_jobs(1)
    assert node.sql("SELECT transfer_syntax_uid FROM instances")[0]["transfer_syntax_uid"] == (
        "1.2.840.10008.1.2.4.70"
    )
    # The same image sent uncompressed through `dicom-node enhance` gives identical pixels.
    out = tmp_path / "offline"
    offline = node.cli("enhance", str(rg1_path), "--output", str(out))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    reference = pydicom.dcmread(out / rg1_path.name)
    np.testing.assert_array_equal(from_compressed.pixel_array, reference.pixel_array)
    assert from_compressed.SOPInstanceUID == reference.SOPInstanceUID
    wait_until(lambda: node.running, 1.0, "the node to keep running")
