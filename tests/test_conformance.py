"""The conformance statement (docs/conformance.md) says what the code does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from harness import InProcessNode, SinkSCP
from helpers.peers import ECHOSCU, LOOPBACK, dcmtk_env, require_executable

from dicom_node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.conformance import render
from dicom_node.scp import STORE_STATUSES

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def _uids(section: str) -> set[str]:
    return set(re.findall(r"\| ([0-9.]+) \|$", section, flags=re.M))


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/conformance.md is out of date: run "
        "`python -m dicom_node.conformance > docs/conformance.md` and review the change."
    )


def test_the_scp_accepts_exactly_the_documented_classes_and_syntaxes(tmp_path: Path) -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    sink = SinkSCP().start()
    node = InProcessNode(tmp_path, rules=[], destinations=[sink.destination()])
    try:
        contexts = node.scp.ae.supported_contexts
        classes = {str(c.abstract_syntax) for c in contexts}
        storage_syntaxes = {
            str(ts)
            for c in contexts
            if c.abstract_syntax != "1.2.840.10008.1.1"
            for ts in c.transfer_syntax
        }
        assert _uids(_section(text, "#### SOP classes as SCP")) == classes
        assert _uids(_section(text, "#### Transfer syntaxes accepted")) == storage_syntaxes
        for status in STORE_STATUSES:
            assert f"| 0x{status:04X} |" in text

        # What a real peer is told: DCMTK's echoscu prints the acceptor's identity.
        require_executable(ECHOSCU, "dcmtk")
        result = subprocess.run(
            [ECHOSCU, "-d", "-aet", "MODALITY", "-aec", "NODE", LOOPBACK, str(node.port)],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert (
            f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}"
            in result.stdout + result.stderr
        )
        assert IMPLEMENTATION_VERSION_NAME in result.stdout + result.stderr
        assert IMPLEMENTATION_CLASS_UID in text and IMPLEMENTATION_VERSION_NAME in text
    finally:
        node.close()
        sink.stop()
