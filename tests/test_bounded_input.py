"""What the node refuses at its edge: images too large to decode, too small, or malformed.

A few hundred bytes of JPEG 2000 can declare 8192 × 8192 pixels; the node
refuses them from the header, before any decoder runs
(:mod:`dicom_node.pixel_bounds`). At C-STORE time (:mod:`dicom_node.dataset_info`)
an image under 64 × 64, native Pixel Data of the wrong length (0xA900) and a
truncated dataset (0xC210) are refused; objects without Pixel Data pass.
"""

from __future__ import annotations

import copy
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pynetdicom._config
import pytest
from dicom_factory import basic_text_sr, save, xray
from harness import InProcessNode, SinkSCP
from helpers.dicom_files import SampleFile
from helpers.peers import LOOPBACK
from onnx_models import make_smoothing_model
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from dicom_node.db import Job
from dicom_node.logs import _FIELDS as FIELDS
from dicom_node.pixel_bounds import DecodedSizeError, codestream_size
from dicom_node.pixels import decode_pixels

BOMB_SIDE = 8192
PEAK_RSS_MARGIN_MB = 50
"""Peak memory refusing the bomb may add to decoding a 64 × 64 image (decoding it adds ≈ 330 MB)."""

ENHANCE_ALL = [{"name": "all", "action": "enhance", "modality": ["CR"]}]


@pytest.fixture(scope="module")
def bomb_codestream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A JPEG 2000 codestream of an 8192 × 8192 black image (a few hundred bytes)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.j2k"
    # Encoded in a child process: encoding holds the whole image in memory.
    script = (
        "import sys, numpy as np, openjpeg; "
        f"open(sys.argv[1], 'wb').write(openjpeg.encode(np.zeros(({BOMB_SIDE}, {BOMB_SIDE}), "
        "dtype=np.uint8)))"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    return path.read_bytes()


def _j2k_image(codestream: bytes, rows: int, cols: int) -> Dataset:
    ds = xray(64, 64, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return ds


def test_a_jpeg2000_bomb_is_refused_from_its_header_without_decoding(
    bomb_codestream: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(bomb_codestream) < 20_000
    bomb = _j2k_image(bomb_codestream, BOMB_SIDE, BOMB_SIDE)

    def never(_self: Dataset) -> None:
        raise AssertionError("pixel_array was called")

    monkeypatch.setattr(Dataset, "pixel_array", property(never))
    with pytest.raises(DecodedSizeError, match=r"8192 × 8192 .*67108864 pixels.*16777216"):
        decode_pixels(bomb)


def test_a_codestream_larger_than_its_header_is_not_decoded(
    bomb_codestream: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    liar = _j2k_image(bomb_codestream, 256, 256)  # the header says 256 × 256

    def never(_self: Dataset) -> None:
        raise AssertionError("pixel_array was called")

    monkeypatch.setattr(Dataset, "pixel_array", property(never))
    with pytest.raises(DecodedSizeError, match=r"declares 8192 × 8192 .* 256 × 256"):
        decode_pixels(liar)


PEAK_SCRIPT = """
import resource, sys, pydicom
from dicom_node.pixels import decode_pixels
from dicom_node.pixel_bounds import DecodedSizeError, codestream_size
ds = pydicom.dcmread(sys.argv[1])
try:
    decode_pixels(ds)
    outcome = "decoded"
except DecodedSizeError as exc:
    outcome = "refused"
print(outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak(path: Path) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome, peak_mb = result.stdout.split()
    return outcome, int(peak_mb)


def test_refusing_the_bomb_keeps_the_peak_memory_small(
    bomb_codestream: bytes, tmp_path: Path
) -> None:
    baseline = _peak(save(xray(64, 64, bits=8), tmp_path / "tiny.dcm"))
    bomb = _j2k_image(bomb_codestream, BOMB_SIDE, BOMB_SIDE)
    outcome, peak_mb = _peak(save(bomb, tmp_path / "bomb.dcm"))
    assert baseline[0] == "decoded" and outcome == "refused"
    # Decoding the bomb adds ≈ 330 MB to the process; refusing it adds nothing.
    assert peak_mb < baseline[1] + PEAK_RSS_MARGIN_MB, f"peak RSS {peak_mb} MB, {baseline}"


# --------------------------------------------------------------------------- through the node


@pytest.fixture
def sink() -> Iterator[SinkSCP]:
    scp = SinkSCP().start()
    yield scp
    scp.stop()


def _node(tmp_path: Path, sink: SinkSCP, **model: object) -> InProcessNode:
    path = make_smoothing_model(tmp_path / "smoother.onnx")
    return InProcessNode(
        tmp_path / "node",
        rules=ENHANCE_ALL,
        destinations=[sink.destination()],
        model=path,
        sections={"model": dict(model)} if model else None,
    )


def _failed_jobs(node: InProcessNode) -> list[tuple[str, str]]:
    with node.runtime.session() as session:
        rows = session.execute(select(Job.state, Job.error)).all()
    return [(str(state), str(error)) for state, error in rows]


def test_the_bomb_fails_its_job_naming_the_size_and_the_limit(
    tmp_path: Path, sink: SinkSCP, bomb_codestream: bytes
) -> None:
    node = _node(tmp_path, sink)
    try:
        assert node.store(_j2k_image(bomb_codestream, BOMB_SIDE, BOMB_SIDE)) == 0x0000
        node.pump()
        ((state, error),) = _failed_jobs(node)
        assert state == "failed"
        assert "8192 × 8192" in error and "max_pixels (16777216)" in error
        assert sink.received == []
    finally:
        node.close()


def test_model_max_pixels_is_the_configured_limit(tmp_path: Path, sink: SinkSCP) -> None:
    node = _node(tmp_path, sink, max_pixels=128 * 128)
    try:
        assert node.store(xray(200, 200)) == 0x0000
        node.pump()
        ((state, error),) = _failed_jobs(node)
        assert state == "failed" and "max_pixels (16384)" in error
    finally:
        node.close()


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (32, 32), (63, 200), (200, 63)])
def test_too_small_images_are_refused_at_c_store(
    tmp_path: Path, sink: SinkSCP, rows: int, cols: int, caplog: pytest.LogCaptureFixture
) -> None:
    node = _node(tmp_path, sink)
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
            assert node.store(xray(rows, cols)) == 0xA900
        reason = f"The image is {rows} × {cols} pixels; the node accepts images of at least 64 × 64"
        reasons = [str(getattr(r, FIELDS, {}).get("reason", "")) for r in caplog.records]
        assert any(reason in text for text in reasons), reasons
        assert node.store(xray(64, 64)) == 0x0000
        assert node.store(basic_text_sr()) == 0x0000  # no Pixel Data: not an image
    finally:
        node.close()


def test_pixel_data_of_the_wrong_length_is_refused_at_c_store(
    tmp_path: Path, sink: SinkSCP
) -> None:
    node = _node(tmp_path, sink)
    try:
        long = xray(128, 128)
        long.PixelData = long.PixelData + b"\0" * 256
        short = xray(128, 128)
        short.PixelData = short.PixelData[:-256]
        odd = xray(129, 129, bits=8)  # 16641 bytes: one padding byte is allowed
        assert len(odd.PixelData) % 2 == 1
        assert node.store(long) == 0xA900
        assert node.store(short) == 0xA900
        assert node.store(odd) == 0x0000
    finally:
        node.close()


def _store_raw(node: InProcessNode, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE the bytes of `path` as they are (pynetdicom reads and sends the file's bytes)."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate(LOOPBACK, node.port, ae_title=node.config.node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.mark.parametrize("cut", [7, 5000])
def test_a_truncated_dataset_gets_0xc210(
    tmp_path: Path, sink: SinkSCP, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    node = _node(tmp_path, sink)
    try:
        buffer = io.BytesIO()
        source = xray(128, 128)
        source.save_as(buffer, enforce_file_format=True)
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(buffer.getvalue()[:-cut])
        assert _store_raw(node, truncated, monkeypatch) == 0xC210
        whole = copy.deepcopy(source)
        whole.SOPInstanceUID = whole.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assert _store_raw(node, save(whole, tmp_path / "whole.dcm"), monkeypatch) == 0x0000
    finally:
        node.close()


def test_a_jpeg_codestream_is_checked_against_its_header(rg1_jpeg_lossless: SampleFile) -> None:
    source = pydicom.dcmread(rg1_jpeg_lossless.path)
    first = next(generate_frames(source.PixelData, number_of_frames=1))
    assert codestream_size(first) == (source.Rows, source.Columns, 1)
    liar = copy.deepcopy(source)
    liar.Rows, liar.Columns = source.Rows // 2, source.Columns // 2
    with pytest.raises(DecodedSizeError, match="compressed image declares"):
        decode_pixels(liar)
