"""Routing rules, the default chest x-ray rule, and loop prevention."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_factory import BASIC_TEXT_SR, CR, CT, DX_PRESENTATION, SC, xray

from dicom_node.config import Destination, parse_config
from dicom_node.dataset_info import InstanceInfo, info_from_dataset
from dicom_node.errors import ConfigError
from dicom_node.routing import enhance_sends, route

DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
DESTS = [
    {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
    {"name": "research", "ae_title": "RES", "host": "127.0.0.1", "port": 105},
]


def info(**kwargs: object) -> InstanceInfo:
    values: dict[str, object] = {
        "sop_class_uid": CR,
        "sop_instance_uid": "1.2.3",
        "study_instance_uid": "1.2",
        "series_instance_uid": "1.2.4",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "modality": "CR",
        "body_part_examined": "CHEST",
    }
    values.update(kwargs)
    return InstanceInfo(**values)  # type: ignore[arg-type]


def config(rules: list[dict[str, object]] | None = None):  # type: ignore[no-untyped-def]
    raw: dict[str, object] = {"destinations": DESTS}
    if rules is not None:
        raw["rules"] = rules
    return parse_config(raw, Path("/tmp"))


@pytest.mark.parametrize(
    ("modality", "sop_class", "body_part"),
    [
        ("CR", CR, "CHEST"),
        ("CR", CR, ""),
        ("DX", DX_PRESENTATION, "CHEST"),
        ("DX", DX_PROCESSING, "CHEST"),
    ],
)
def test_default_rule_enhances_chest_radiographs(
    modality: str, sop_class: str, body_part: str
) -> None:
    decision = route(
        config(),
        info(modality=modality, sop_class_uid=sop_class, body_part_examined=body_part),
        "X",
    )
    assert decision.action == "enhance"
    assert decision.rule == "chest-xray"
    assert decision.destinations == ("pacs", "research")


@pytest.mark.parametrize(
    ("modality", "sop_class", "body_part"),
    [
        ("CR", CR, "HAND"),
        ("CT", CT, "CHEST"),
        ("OT", SC, ""),
        ("SR", BASIC_TEXT_SR, ""),
        ("DX", CT, "CHEST"),
    ],
)
def test_default_rule_ignores_everything_else(
    modality: str, sop_class: str, body_part: str
) -> None:
    decision = route(
        config(),
        info(modality=modality, sop_class_uid=sop_class, body_part_examined=body_part),
        "X",
    )
    assert decision.action == "ignore"
    assert decision.reason == "no rule matches"


def test_first_matching_rule_wins_and_names_destinations() -> None:
    cfg = config(
        [
            {
                "name": "research-room",
                "action": "forward",
                "calling_aet": ["ROOM9"],
                "destinations": ["research"],
            },
            {
                "name": "pa-only",
                "action": "enhance",
                "view_position": ["PA"],
                "destinations": ["pacs"],
            },
            {"name": "rest", "action": "ignore"},
        ]
    )
    assert route(cfg, info(view_position="PA"), "ROOM9").rule == "research-room"
    assert route(cfg, info(view_position="PA"), "ROOM9").destinations == ("research",)
    pa = route(cfg, info(view_position="PA"), "ROOM1")
    assert (pa.action, pa.rule, pa.destinations) == ("enhance", "pa-only", ("pacs",))
    ap = route(cfg, info(view_position="AP"), "ROOM1")
    assert (ap.action, ap.rule) == ("ignore", "rest")


def test_a_shadow_rule_routes_to_enhance_without_sending() -> None:
    cfg = config(
        [
            {"name": "new-model", "action": "enhance", "calling_aet": ["ROOM9"], "send": False},
            {"name": "live", "action": "enhance", "destinations": ["pacs"]},
        ]
    )
    shadow = route(cfg, info(), "ROOM9")
    assert (shadow.action, shadow.rule, shadow.send) == ("enhance", "new-model", False)
    assert shadow.reason == "matched rule 'new-model' (shadow: outputs kept, not sent)"
    # The destinations it would use once live are still routed and recorded.
    assert shadow.destinations == ("pacs", "research")
    live = route(cfg, info(), "ROOM1")
    assert (live.rule, live.send, live.reason) == ("live", True, "matched rule 'live'")
    # The worker asks by rule name when it processes the job: the current
    # configuration decides; a name no enhance rule has keeps the default.
    assert enhance_sends(cfg, "new-model") is False
    assert enhance_sends(cfg, "live") is True
    assert enhance_sends(cfg, "renamed") is True
    assert enhance_sends(cfg, None) is True
    forward = config([{"name": "new-model", "action": "forward"}])
    assert enhance_sends(forward, "new-model") is True


def test_series_description_regex() -> None:
    cfg = config(
        [{"name": "thorax", "action": "enhance", "series_description": "(?i)thorax|chest"}]
    )
    assert route(cfg, info(series_description="Thorax pa"), "X").action == "enhance"
    assert route(cfg, info(series_description="Abdomen"), "X").action == "ignore"


def test_node_output_is_never_processed_again() -> None:
    cfg = config([{"name": "everything", "action": "enhance"}])
    decision = route(cfg, info(produced_by_node=True), "PACS")
    assert decision.action == "ignore"
    assert "produced by this node" in decision.reason


def test_loop_prevention_reads_provenance_not_sop_class() -> None:
    # A CR-class object (not SC) carrying this node's processing provenance.
    from pydicom.dataset import Dataset

    from dicom_node import PRODUCT_NAME

    ds = xray()
    item, purpose = Dataset(), Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        "109102",
        "DCM",
        "Processing Equipment",
    )
    item.Manufacturer = PRODUCT_NAME
    item.PurposeOfReferenceCodeSequence = [purpose]
    ds.ContributingEquipmentSequence = [item]
    assert info_from_dataset(ds, "1.2.840.10008.1.2.1").produced_by_node
    assert route(config(), info_from_dataset(ds, "1.2.840.10008.1.2.1"), "PACS").action == "ignore"
    # Another vendor's processing equipment is not ours.
    item.Manufacturer = "Other Vendor"
    assert not info_from_dataset(ds, "1.2.840.10008.1.2.1").produced_by_node


def test_rules_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\].action: 'sharpen' is not one of"):
        config([{"name": "x", "action": "sharpen"}])
    with pytest.raises(
        ConfigError, match=r"rules\[0\].destinations: 'nowhere' is not a configured"
    ):
        config([{"name": "x", "action": "forward", "destinations": ["nowhere"]}])
    with pytest.raises(ConfigError, match=r"rules\[0\].series_description: '\(' is not a valid"):
        config([{"name": "x", "action": "forward", "series_description": "("}])
    with pytest.raises(
        ConfigError, match=r"rules\[0\].sop_class_uid: '1.2.x' is not a valid DICOM UID"
    ):
        config([{"name": "x", "action": "forward", "sop_class_uid": ["1.2.x"]}])
    with pytest.raises(ConfigError, match=r"rules\[0\]: unknown key 'modalty'"):
        config([{"name": "x", "action": "forward", "modalty": ["CR"]}])


def test_destination_lookup() -> None:
    cfg = config()
    assert cfg.destination("pacs") == Destination("pacs", "PACS", "127.0.0.1", 104)
    with pytest.raises(ConfigError, match="no destination named 'nope'"):
        cfg.destination("nope")


def test_config_check_explains_which_rule_matches(tmp_path: Path) -> None:
    import subprocess
    import sys

    from dicom_factory import RG1, ct, save

    ct_path = save(ct(), tmp_path / "ct.dcm")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_node.cli",
            "config",
            "check",
            "--config",
            "config/node.example.toml",
            "--explain",
            str(RG1),
            "--explain",
            str(ct_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        f"{RG1}: action enhance, rule chest-xray (matched rule 'chest-xray'); destinations: pacs"
        in lines
    )
    assert f"{ct_path}: action ignore, rule - (no rule matches); destinations: none" in lines
