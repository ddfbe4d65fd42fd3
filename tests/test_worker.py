"""The worker and the dispatcher in-process: receive → store → job → infer → derive → send.

These run the node's own code end to end on a temporary SQLite database with
the in-process harness (:mod:`harness`): the node's SCP on a kernel-chosen
port, a sink SCP as the PACS, a tiny ONNX model, and :meth:`pump` instead of
the scheduler. The same flows with DCMTK, Orthanc and ``dicom-node serve`` as
a process are in ``test_enhance_e2e.py``, ``test_forward.py`` and
``test_failures.py``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_factory import ct
from harness import InProcessNode, SinkSCP
from onnx_models import make_smoothing_model
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.config import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING
from dicom_node.db import Dispatch, Job

ENHANCE_ALL = [
    {
        "name": "chest-xray",
        "action": "enhance",
        "modality": ["CR", "DX"],
        "sop_class_uid": [CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING],
        "body_part_examined": ["CHEST", ""],
    }
]
FORWARD_ALL = [{"name": "all", "action": "forward"}]


@pytest.fixture
def sink() -> Iterator[SinkSCP]:
    scp = SinkSCP().start()
    yield scp
    scp.stop()


def _fresh(template: Dataset) -> Dataset:
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _node(tmp_path: Path, sink: SinkSCP, rules: list[dict[str, Any]]) -> InProcessNode:
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    return InProcessNode(
        tmp_path / "node", rules=rules, destinations=[sink.destination()], model=model
    )


def _states(node: InProcessNode) -> tuple[list[str], list[str]]:
    with node.runtime.session() as session:
        jobs = list(session.scalars(select(Job.state)))
        dispatches = list(session.scalars(select(Dispatch.state)))
    return [str(s) for s in jobs], [str(s) for s in dispatches]


def test_enhance_rule_sends_one_derived_object_that_points_at_its_source(
    tmp_path: Path, sink: SinkSCP, small_dataset: Dataset
) -> None:
    node = _node(tmp_path, sink, ENHANCE_ALL)
    try:
        source = _fresh(small_dataset)
        assert node.store(source) == 0x0000
        assert sink.received == []  # nothing happens before the worker runs
        assert node.pump() >= 1
        assert len(sink.received) == 1
        derived = sink.received[0]
        assert derived.SOPInstanceUID != source.SOPInstanceUID
        assert derived.SeriesInstanceUID != source.SeriesInstanceUID
        assert derived.StudyInstanceUID == source.StudyInstanceUID
        assert "DERIVED" in derived.ImageType
        assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        # The tiny model smooths: the derived pixels differ from the source's but keep its size.
        assert derived.pixel_array.shape == source.pixel_array.shape
        assert not np.array_equal(derived.pixel_array, source.pixel_array)
        assert _states(node) == (["done"], ["sent"])
        # Pumping again does nothing more: the work is finished, not repeated.
        assert node.pump() == 0
        assert len(sink.received) == 1
    finally:
        node.close()


def test_forward_rule_sends_the_original_unchanged(
    tmp_path: Path, sink: SinkSCP, small_dataset: Dataset
) -> None:
    node = _node(tmp_path, sink, FORWARD_ALL)
    try:
        source = _fresh(small_dataset)
        assert node.store(source) == 0x0000
        node.pump()
        assert [ds.SOPInstanceUID for ds in sink.received] == [source.SOPInstanceUID]
        assert sink.received[0].PixelData == source.PixelData
        assert _states(node) == (["done"], ["sent"])
    finally:
        node.close()


def test_a_non_chest_image_is_stored_but_not_enhanced(tmp_path: Path, sink: SinkSCP) -> None:
    node = _node(tmp_path, sink, ENHANCE_ALL)
    try:
        assert node.store(ct()) == 0x0000
        node.pump()
        assert sink.received == []
        assert _states(node) == ([], [])
    finally:
        node.close()


def test_a_refusing_pacs_gets_the_object_once_it_accepts_again(
    tmp_path: Path, sink: SinkSCP, small_dataset: Dataset
) -> None:
    node = _node(tmp_path, sink, ENHANCE_ALL)
    try:
        sink.status = 0xA700  # out of resources
        assert node.store(_fresh(small_dataset)) == 0x0000
        node.pump()
        assert sink.received == []
        assert _states(node) == (["sending"], ["pending"])
        sink.status = 0x0000
        deadline = time.monotonic() + 10
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.05)  # the retry's backoff (FAST_JOBS: 0.05 to 0.1 s)
            node.pump()
        assert len(sink.received) == 1
        assert _states(node) == (["done"], ["sent"])
    finally:
        node.close()


def test_a_pacs_that_always_refuses_dead_letters_the_job_after_the_cap(
    tmp_path: Path, sink: SinkSCP, small_dataset: Dataset
) -> None:
    node = _node(tmp_path, sink, ENHANCE_ALL)
    try:
        sink.status = 0xA700
        assert node.store(_fresh(small_dataset)) == 0x0000
        deadline = time.monotonic() + 15
        while _states(node)[0] != ["dead_lettered"] and time.monotonic() < deadline:
            time.sleep(0.05)
            node.pump()
        assert _states(node) == (["dead_lettered"], ["dead"])
        assert sink.received == []
    finally:
        node.close()
