"""Every Specific Character Set pydicom decodes gives a derived object with the same names.

highdicom refuses a Specific Character Set whose first value is empty (the
standard's own Japanese ``\\ISO 2022 IR 87`` and Korean ``\\ISO 2022 IR 149``
examples); :mod:`dicom_node.character_set` keeps the source's value anyway,
and every derived object passes dciodvfy.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from dicom_factory import xray
from harness import InProcessNode, SinkSCP
from onnx_models import make_smoothing_model
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from test_derive import dciodvfy_errors, derive

from dicom_node.character_set import UTF8, derived_character_set

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
KOREAN = "Hong^Gildong=洪^吉洞=홍^길동"

NAMES: dict[str, str] = {
    "ISO_IR 100": "Müller^Jörg",
    "ISO 2022 IR 100": "Müller^Jörg",
    "ISO_IR 101": "Dvořák^Antonín",
    "ISO_IR 126": "Διονυσιος",
    "ISO_IR 127": "قباني^لنزار",
    "ISO_IR 138": "שרון^דבורה",
    "ISO_IR 144": "Люкceмбypг",
    "ISO_IR 148": "Öztürk^Çağrı",
    "ISO_IR 192": "Wang^XiaoDong=王^小東",
    "GB18030": "Wang^XiaoDong=王^小东",
    "GBK": "Wang^XiaoDong=王^小东",
    # ISO_IR 13: dciodvfy refuses its katakana (0xA1-0xDF) in any object, the
    # source's too, so the name keeps to its Roman half.
}
"""A name with characters of the set, where the set has more than ASCII."""

STANDARD_SINGLE = sorted(
    term
    for term in python_encoding
    if term and term not in ("ISO_IR 6", "ISO 2022 GBK", "ISO 2022 58")
)

EQUIVALENT = {
    **{
        f"ISO 2022 IR {n}": f"ISO_IR {n}"
        for n in (13, 100, 101, 109, 110, 126, 127, 138, 144, 148, 166)
    },
    "GBK": "GB18030",
}
"""Single values that are written as their equivalent (see :mod:`dicom_node.character_set`)."""
EXAMPLES = ((["", "ISO 2022 IR 87"], JAPANESE), (["", "ISO 2022 IR 149"], KOREAN))
"""The standard's Japanese and Korean examples (PS3.5 Annex H and I)."""

CASES: list[tuple[list[str], str]] = [
    (["", "ISO 2022 IR 87"], JAPANESE),
    (["", "ISO 2022 IR 149"], KOREAN),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], JAPANESE),
    (["ISO 2022 IR 6", "ISO 2022 IR 100"], "Müller^Jörg"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    *[([term], NAMES.get(term, "Test^Name")) for term in STANDARD_SINGLE],
]


def _received(character_set: list[str], name: str) -> Dataset:
    """A 256 × 256 source with `name`, written and read back as the node receives it."""
    source = xray(256, 256)
    source.SpecificCharacterSet = character_set if len(character_set) > 1 else character_set[0]
    source.PatientName = name
    source.StudyDescription = name.split("=")[0].replace("^", " ")
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(("character_set", "name"), CASES, ids=lambda v: repr(v))
def test_the_derived_object_keeps_the_character_set_and_the_names(
    character_set: list[str], name: str, tmp_path: Path
) -> None:
    source = _received(character_set, name)
    assert str(source.PatientName) == name  # pydicom decodes it
    path = tmp_path / "derived.dcm"
    derive(source).save_as(path, enforce_file_format=True)
    derived = pydicom.dcmread(path)
    kept = derived.SpecificCharacterSet
    kept = list(kept) if isinstance(kept, pydicom.multival.MultiValue) else [kept]
    if len(character_set) == 1:
        assert kept == [EQUIVALENT.get(character_set[0], character_set[0])]
    else:
        assert kept == character_set
    assert str(derived.PatientName) == name
    assert derived.StudyDescription == source.StudyDescription
    assert dciodvfy_errors(path) == []


def test_a_character_set_that_cannot_be_kept_becomes_utf8(tmp_path: Path) -> None:
    # "ISO_IR 6" is not a defined term (the default repertoire is an empty value),
    # and a stand-alone set cannot be combined with code extensions.
    for value in ("ISO_IR 6", ["ISO_IR 100", "ISO 2022 IR 87"]):
        source = xray(128, 128, SpecificCharacterSet=value)
        assert derived_character_set(source) == UTF8
    source = _received(["ISO_IR 100"], "Müller^Jörg")
    source.SpecificCharacterSet = "ISO_IR 6"
    path = tmp_path / "derived.dcm"
    derive(source).save_as(path, enforce_file_format=True)
    derived = pydicom.dcmread(path)
    assert derived.SpecificCharacterSet == UTF8
    assert str(derived.PatientName) == "Müller^Jörg"
    assert dciodvfy_errors(path) == []


def test_a_source_without_a_character_set_gives_none() -> None:
    source = xray(128, 128)
    del source.SpecificCharacterSet
    assert derived_character_set(source) is None
    assert "SpecificCharacterSet" not in derive(source)


def test_japanese_and_korean_sources_are_enhanced_through_the_node(tmp_path: Path) -> None:
    sink = SinkSCP().start()
    node = InProcessNode(
        tmp_path / "node",
        rules=[{"name": "all", "action": "enhance", "modality": ["CR"]}],
        destinations=[sink.destination()],
        model=make_smoothing_model(tmp_path / "smoother.onnx"),
    )
    try:
        for character_set, name in EXAMPLES:
            assert node.store(_received(character_set, name)) == 0x0000
        node.pump()
        assert len(sink.received) == 2
        for index, (character_set, name) in enumerate(EXAMPLES):
            path = tmp_path / f"derived{index}.dcm"
            sink.received[index].save_as(path, enforce_file_format=True)
            derived = pydicom.dcmread(path)
            assert list(derived.SpecificCharacterSet) == character_set
            assert str(derived.PatientName) == name
            assert dciodvfy_errors(path) == []
    finally:
        node.close()
        sink.stop()
