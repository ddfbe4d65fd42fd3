"""Configuration: validation (one clear line naming key and value, exit code 2),
defaults, path resolution and ``DICOM_NODE_<SECTION>_<KEY>`` overrides.

Most cases run in process (:func:`dicom_node.config.parse_config`); a
representative set goes through ``dicom-node config check`` and
``dicom-node serve`` to pin the exit code and the one-line message.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest
from helpers.module_graph import find_cycle, import_graph
from helpers.peers import DICOM_NODE, NodeProcess, echoscu, free_port, to_toml

from dicom_node.config import (
    CHEST_BODY_PARTS,
    DEFAULT_RULES,
    Config,
    ConfigError,
    Destination,
    JobSettings,
    ModelSettings,
    NodeSettings,
    OutputSettings,
    Rule,
    StorageSettings,
    apply_env_overrides,
    load_config,
    parse_config,
)
from dicom_node.strength import DEFAULT_STRENGTH

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "node.example.toml"
DEST = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def parse(raw: dict[str, Any], base: Path = Path("/srv/node")) -> Config:
    return parse_config(raw, base)


# --------------------------------------------------------------------------- valid input


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("")
    config = load_config(path, environ={})
    assert config.node.ae_title == "CXR_ENHANCE" and config.node.port == 11112
    assert config.node.allowed_calling_aets == ()  # empty: any caller
    assert config.storage.data_dir == tmp_path / "var"
    assert config.storage.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'node.sqlite3'}"
    assert config.rules == DEFAULT_RULES
    assert config.destinations == ()


def test_a_full_configuration(tmp_path: Path) -> None:
    raw = {
        "node": {
            "ae_title": "CXR_NODE",
            "host": "127.0.0.1",
            "port": 11113,
            "allowed_calling_aets": ["CT01", "DX_ROOM_2"],
            "max_associations": 4,
        },
        "storage": {
            "data_dir": "data",
            "database_url": "postgresql+psycopg://node@db.example/node",
            "retention_days": 7,
        },
        "destinations": [DEST, {**DEST, "name": "backup", "port": 11114, "max_batch": 10}],
        "rules": [
            {
                "name": "chest",
                "action": "forward",
                "destinations": ["backup"],
                "modality": ["cr", "DX"],
                "series_description": "^PA",
            }
        ],
    }
    config = parse(raw, tmp_path)
    assert config.node.allowed_calling_aets == ("CT01", "DX_ROOM_2")
    assert config.storage.data_dir == tmp_path / "data"
    assert config.storage.effective_database_url.startswith("postgresql+psycopg://")
    assert config.destination("backup").max_batch == 10
    assert config.rules[0].modality == ("CR", "DX")
    with pytest.raises(ConfigError, match="no destination named 'nope'"):
        config.destination("nope")


def test_strength_default_model_value_and_rule_override() -> None:
    assert parse({}).model.strength == DEFAULT_STRENGTH
    assert all(rule.strength is None for rule in parse({}).rules)
    config = parse(
        {
            "model": {"strength": 0.8},
            "rules": [
                {"name": "soft", "action": "enhance", "strength": 0.7},
                {"name": "model-default", "action": "enhance"},
                {"name": "none", "action": "enhance", "strength": 0},
                {"name": "fwd", "action": "forward"},
            ],
        }
    )
    assert config.model.strength == 0.8
    assert [rule.strength for rule in config.rules] == [0.7, None, 0.0, None]
    # Integers are numbers too, kept as floats.
    assert isinstance(config.rules[2].strength, float)
    assert parse({"model": {"strength": 1}}).model.strength == 1.0


def test_strength_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"^strength: 1\.2 is out of range; expected 0 to 1\.$"):
        ModelSettings(strength=1.2)
    with pytest.raises(TypeError, match=r"^strength: 'high' is not a number"):
        ModelSettings(strength="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only an enhance rule has a strength"):
        Rule(name="fwd", action="forward", strength=0.5)
    assert Rule(name="e", action="enhance", strength=0.5).strength == 0.5


CODE_CASES: list[tuple[Callable[[], object], type[Exception], str]] = [
    # (settings built in code, exception class, start of the message)
    (lambda: ModelSettings(tile_size=1000), ValueError, "tile_size: 1000 is not a multiple of 256"),
    (lambda: ModelSettings(tile_size=128), ValueError, "tile_size: 128 is too small"),
    (
        lambda: ModelSettings(tile_size=512, tile_overlap=256),
        ValueError,
        "tile_overlap: 256 must be less than half of tile_size (512)",
    ),
    (lambda: ModelSettings(provider="tpu"), ValueError, "provider: 'tpu' is not one of auto"),  # type: ignore[arg-type]
    (lambda: ModelSettings(path_source="elsewhere"), ValueError, "path_source: 'elsewhere'"),  # type: ignore[arg-type]
    (lambda: ModelSettings(warmup="yes"), TypeError, "warmup: 'yes' is not a boolean"),  # type: ignore[arg-type]
    (lambda: ModelSettings(tile_sise=512), TypeError, "unknown key 'tile_sise'"),  # type: ignore[call-arg]
    (lambda: NodeSettings(port=0), ValueError, "port: 0 is not a valid TCP port"),
    (lambda: NodeSettings(ae_title="X" * 17), ValueError, "ae_title: 'XXXXXXXXXXXXXXXXX' is"),
    (lambda: JobSettings(max_attempts=0), ValueError, "max_attempts: 0 is too small"),
    (lambda: JobSettings(retry_max_delay=1.0), ValueError, "retry_max_delay: 1.0 is smaller"),
    (lambda: JobSettings(poll_interval=float("nan")), ValueError, "poll_interval: nan"),
    (lambda: StorageSettings(database_url="mysql://x"), ValueError, "database_url: 'mysql://x'"),
    (lambda: Destination("pacs", "PACS", "host name", 104), ValueError, "host: 'host name'"),
    (lambda: Destination("pacs", "PACS", "h"), TypeError, "the key 'port' is required"),  # type: ignore[call-arg]
    (lambda: OutputSettings(series_description="{nope}"), ValueError, "series_description"),
    (lambda: Rule(name="r", action="delete"), ValueError, "action: 'delete' is not one of"),  # type: ignore[arg-type]
    (lambda: Rule(name="r", action="forward", sop_class_uid=("1.02",)), ValueError, "sop_class"),
    (
        lambda: Config(rules=(Rule(name="r", action="forward", destinations=("pacs",)),)),
        ValueError,
        "rules[0].destinations: 'pacs' is not a configured destination.",
    ),
    (lambda: Rule(name="r", action="forward", send=False), ValueError, "send: False is not"),
    (lambda: Rule(name="r", action="enhance", send="no"), TypeError, "send: 'no' is not a bool"),  # type: ignore[arg-type]
    (lambda: replace(ModelSettings(), tile_size=1000), ValueError, "tile_size: 1000"),
    (lambda: replace(ModelSettings(), strength=2), ValueError, "strength: 2 is out of range"),
]


@pytest.mark.parametrize(
    ("build", "kind", "start"), CODE_CASES, ids=[case[2].split(":")[0] for case in CODE_CASES]
)
def test_settings_built_in_code_are_validated(
    build: Callable[[], object], kind: type[Exception], start: str
) -> None:
    with pytest.raises(kind) as caught:
        build()
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert message.startswith(start) or start in message, message
    assert "\n" not in message


def test_settings_are_frozen_hashable_and_compare_by_value() -> None:
    settings = ModelSettings(tile_size=512, tile_overlap=64)
    with pytest.raises(FrozenInstanceError):
        settings.tile_size = 1024  # type: ignore[misc]
    assert hash(settings) == hash(ModelSettings(tile_size=512, tile_overlap=64))
    assert replace(settings, warmup=False).warmup is False
    assert hash(parse({})) == hash(parse({}))
    assert parse({}).rules[0].body_part_examined == CHEST_BODY_PARTS  # the default rule's
    assert Rule(name="any", action="forward").body_part_examined == ()  # a rule's: any part
    assert parse({"jobs": {"retry_base_delay": 5}}).jobs.retry_base_delay == 5.0
    assert isinstance(parse({"jobs": {"retry_base_delay": 5}}).jobs.retry_base_delay, float)


def test_parsing_the_configuration_imports_neither_numpy_nor_pydicom(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib; import dicom_node.config as c; "
        "c.load_config(pathlib.Path(sys.argv[1]), environ={}); "
        "assert 'numpy' not in sys.modules and 'pydicom' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pydicom'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


def test_config_imports_nothing_else_of_the_project() -> None:
    for name in ("config", "config_env", "config_errors", "config_sections", "config_types"):
        tree = ast.parse((REPO / "dicom_node" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            if module.startswith("dicom_node"):
                assert module.startswith("dicom_node.config"), f"{name} imports {module}"


def test_relative_paths_resolve_against_the_folder_holding_config(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "node.toml"
    path.write_text('[storage]\ndata_dir = "var/data"\n')
    assert load_config(path, environ={}).storage.data_dir == tmp_path / "var" / "data"


# --------------------------------------------------------------------------- invalid input

INVALID: list[tuple[dict[str, Any], str, str]] = [
    # (raw configuration, key named in the message, value shown in the message)
    ({"node": {"ae_title": "A_VERY_LONG_AE_TITLE"}}, "node.ae_title", "'A_VERY_LONG_AE_TITLE'"),
    ({"node": {"ae_title": "BAD\\AET"}}, "node.ae_title", "'BAD\\\\AET'"),
    ({"node": {"ae_title": "BAD\x01AET"}}, "node.ae_title", "'BAD\\x01AET'"),
    ({"node": {"ae_title": "TAB\tAET"}}, "node.ae_title", "'TAB\\tAET'"),
    ({"node": {"ae_title": "   "}}, "node.ae_title", "'   '"),
    ({"node": {"ae_title": "ÉCHO"}}, "node.ae_title", "'ÉCHO'"),
    ({"node": {"ae_title": 42}}, "node.ae_title", "42"),
    ({"node": {"port": 0}}, "node.port", "0"),
    ({"node": {"port": 65536}}, "node.port", "65536"),
    ({"node": {"port": -1}}, "node.port", "-1"),
    ({"node": {"port": "11112"}}, "node.port", "'11112'"),
    ({"node": {"port": True}}, "node.port", "True"),
    ({"node": {"port": 11112.5}}, "node.port", "11112.5"),
    ({"node": {"host": "bad host"}}, "node.host", "'bad host'"),
    ({"node": {"max_associations": 0}}, "node.max_associations", "0"),
    ({"node": {"max_associations": "ten"}}, "node.max_associations", "'ten'"),
    ({"node": {"allowed_calling_aets": 5}}, "node.allowed_calling_aets", "5"),
    (
        {"node": {"allowed_calling_aets": ["OK", "SEVENTEEN_CHARS_X"]}},
        "node.allowed_calling_aets[1]",
        "'SEVENTEEN_CHARS_X'",
    ),
    ({"storage": {"data_dir": ""}}, "storage.data_dir", "''"),
    ({"storage": {"database_url": "mysql://db/node"}}, "storage.database_url", "'mysql://db/node'"),
    ({"storage": {"retention_days": "30"}}, "storage.retention_days", "'30'"),
    ({"storage": {"retention_days": -1}}, "storage.retention_days", "-1"),
    ({"storage": {"sqlite_busy_timeout": "fast"}}, "storage.sqlite_busy_timeout", "'fast'"),
    ({"destinations": [{**DEST, "port": 70000}]}, "destinations[0].port", "70000"),
    (
        {"destinations": [{**DEST, "ae_title": "PACS\\1"}]},
        "destinations[0].ae_title",
        "'PACS\\\\1'",
    ),
    ({"destinations": [{**DEST, "host": ""}]}, "destinations[0].host", "''"),
    ({"destinations": [{**DEST, "name": "my pacs"}]}, "destinations[0].name", "'my pacs'"),
    ({"destinations": [DEST, DEST]}, "destinations[1].name", "'pacs'"),
    ({"jobs": {"max_attempts": 0}}, "jobs.max_attempts", "0"),
    ({"jobs": {"retry_base_delay": "5s"}}, "jobs.retry_base_delay", "'5s'"),
    ({"jobs": {"retry_jitter": 1.5}}, "jobs.retry_jitter", "1.5"),
    ({"jobs": {"retry_max_delay": 1.0}}, "jobs.retry_max_delay", "1.0"),
    ({"jobs": {"poll_interval": 0}}, "jobs.poll_interval", "0"),
    ({"rules": [{"name": "r", "action": "delete"}]}, "rules[0].action", "'delete'"),
    (
        {"rules": [{"name": "r", "action": "forward", "destinations": ["nowhere"]}]},
        "rules[0].destinations",
        "'nowhere'",
    ),
    (
        {"rules": [{"name": "r", "action": "forward", "sop_class_uid": ["1.2.04"]}]},
        "rules[0].sop_class_uid",
        "'1.2.04'",
    ),
    (
        {"rules": [{"name": "r", "action": "forward", "series_description": "(("}]},
        "rules[0].series_description",
        "'(('",
    ),
    ({"logging": {"level": "LOUD"}}, "logging.level", "'LOUD'"),
    ({"model": {"strength": 1.5}}, "model.strength", "1.5"),
    ({"model": {"strength": -0.1}}, "model.strength", "-0.1"),
    ({"model": {"strength": float("nan")}}, "model.strength", "nan"),
    ({"model": {"strength": "0.5"}}, "model.strength", "'0.5'"),
    ({"model": {"strength": True}}, "model.strength", "True"),
    (
        {"rules": [{"name": "r", "action": "enhance", "strength": 2}]},
        "rules[0].strength",
        "2",
    ),
    (
        {"rules": [{"name": "r", "action": "enhance", "strength": "strong"}]},
        "rules[0].strength",
        "'strong'",
    ),
    (
        {"rules": [{"name": "r", "action": "forward", "strength": 0.7}]},
        "rules[0].strength",
        "0.7",
    ),
    (
        {"rules": [{"name": "r", "action": "ignore", "strength": 0.7}]},
        "rules[0].strength",
        "0.7",
    ),
    ({"rules": [{"name": "r", "action": "enhance", "send": "no"}]}, "rules[0].send", "'no'"),
    ({"rules": [{"name": "r", "action": "enhance", "send": 0}]}, "rules[0].send", "0"),
    ({"rules": [{"name": "r", "action": "forward", "send": False}]}, "rules[0].send", "False"),
    ({"rules": [{"name": "r", "action": "ignore", "send": False}]}, "rules[0].send", "False"),
    ({"node": {"colour": "blue"}}, "[node]", "'colour'"),
    ({"nodes": {}}, "configuration", "'nodes'"),
]


@pytest.mark.parametrize(("raw", "key", "shown"), INVALID, ids=[case[1] for case in INVALID])
def test_a_bad_value_is_named_with_its_key(raw: dict[str, Any], key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    message = str(caught.value)
    assert message.startswith(f"{key}:") or message.startswith(key), message
    assert shown in message, message
    assert "\n" not in message


def test_strength_messages_say_what_is_wrong() -> None:
    with pytest.raises(
        ConfigError, match=r"^model\.strength: 1\.5 is out of range; expected 0 to 1"
    ):
        parse({"model": {"strength": 1.5}})
    with pytest.raises(ConfigError, match=r"^model\.strength: '0\.5' is not a number"):
        parse({"model": {"strength": "0.5"}})
    with pytest.raises(
        ConfigError,
        match=r"^rules\[1\]\.strength: 0\.7 is not allowed on a 'forward' rule; only an enhance",
    ):
        parse(
            {
                "rules": [
                    {"name": "e", "action": "enhance", "strength": 0.7},
                    {"name": "f", "action": "forward", "strength": 0.7},
                ]
            }
        )


def test_send_defaults_to_true_and_only_an_enhance_rule_can_turn_it_off() -> None:
    assert all(rule.send for rule in parse({}).rules)
    config = parse(
        {
            "rules": [
                {"name": "shadow", "action": "enhance", "send": False},
                {"name": "live", "action": "enhance", "send": True},
                {"name": "plain", "action": "enhance"},
                {"name": "fwd", "action": "forward", "send": True},
                {"name": "skip", "action": "ignore"},
            ]
        }
    )
    assert [rule.send for rule in config.rules] == [False, True, True, True, True]
    assert Rule(name="s", action="enhance", send=False).send is False
    with pytest.raises(
        ConfigError,
        match=r"^rules\[1\]\.send: False is not allowed with action 'forward' \(forwarding "
        r"without sending does nothing\); only an enhance rule can keep its outputs unsent\.$",
    ):
        parse(
            {
                "rules": [
                    {"name": "e", "action": "enhance", "send": False},
                    {"name": "f", "action": "forward", "send": False},
                ]
            }
        )
    with pytest.raises(
        ConfigError, match=r"^rules\[0\]\.send: False is not allowed with action 'ignore'"
    ):
        parse({"rules": [{"name": "i", "action": "ignore", "send": False}]})
    with pytest.raises(ConfigError, match=r"^rules\[0\]\.send: 'false' is not a boolean"):
        parse({"rules": [{"name": "e", "action": "enhance", "send": "false"}]})


def test_missing_required_destination_key() -> None:
    with pytest.raises(ConfigError, match=r"destinations\[0\]: the key 'port' is required"):
        parse({"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "h"}]})


# --------------------------------------------------------------------------- environment


def test_environment_overrides_single_values(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(to_toml({"node": {"ae_title": "FILE_AET", "port": 11112}}))
    env = {
        "DICOM_NODE_NODE_PORT": "11113",
        "DICOM_NODE_NODE_ALLOWED_CALLING_AETS": "CT01, DX01",
        "DICOM_NODE_STORAGE_DATABASE_URL": "postgresql+psycopg://node@db/node",
        "DICOM_NODE_JOBS_RETRY_BASE_DELAY": "0.5",
        "DICOM_NODE_NODE_AE_TITLE": "1234",  # digits: still an AE title, not a number
        "UNRELATED": "x",
    }
    config = load_config(path, environ=env)
    assert config.node.port == 11113
    assert config.node.ae_title == "1234"
    assert config.node.allowed_calling_aets == ("CT01", "DX01")
    assert config.storage.database_url == "postgresql+psycopg://node@db/node"
    assert config.jobs.retry_base_delay == 0.5


def test_environment_overrides_the_strength(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(to_toml({"model": {"strength": 0.9}}))
    assert load_config(path, environ={}).model.strength == 0.9
    assert load_config(path, environ={"DICOM_NODE_MODEL_STRENGTH": "0.6"}).model.strength == 0.6
    assert load_config(path, environ={"DICOM_NODE_MODEL_STRENGTH": "0"}).model.strength == 0.0
    with pytest.raises(ConfigError, match=r"^model\.strength: 1\.2 is out of range"):
        load_config(path, environ={"DICOM_NODE_MODEL_STRENGTH": "1.2"})
    with pytest.raises(ConfigError, match=r"^model\.strength: 'strong' is not a number"):
        load_config(path, environ={"DICOM_NODE_MODEL_STRENGTH": "strong"})


def test_a_bad_environment_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"node\.port: 'eleven' is not a valid TCP port"):
        load_config(path, environ={"DICOM_NODE_NODE_PORT": "eleven"})
    with pytest.raises(ConfigError, match="DICOM_NODE_PORT: unknown setting"):
        load_config(path, environ={"DICOM_NODE_PORT": "11112"})
    with pytest.raises(ConfigError, match="unknown key 'prot'"):
        load_config(path, environ={"DICOM_NODE_NODE_PROT": "11112"})


def test_rules_have_no_environment_overrides(tmp_path: Path) -> None:
    # Overrides follow the types: only the tables (sections) have them, and
    # `rules` is an array of tables, so `send` is set in the file only.
    path = tmp_path / "node.toml"
    path.write_text(to_toml({"rules": [{"name": "e", "action": "enhance", "send": False}]}))
    with pytest.raises(ConfigError, match=r"^DICOM_NODE_RULES_SEND: unknown setting"):
        load_config(path, environ={"DICOM_NODE_RULES_SEND": "true"})
    assert load_config(path, environ={}).rules[0].send is False


def test_overrides_do_not_modify_the_parsed_document() -> None:
    raw = {"node": {"port": 1}}
    merged = apply_env_overrides(raw, {"DICOM_NODE_NODE_PORT": "2"})
    assert raw == {"node": {"port": 1}} and merged["node"]["port"] == 2


# --------------------------------------------------------------------------- the example file


def test_the_example_configuration_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing"
    text = EXAMPLE.read_text()
    load_config(EXAMPLE, environ={})
    raw = tomllib.loads(text)
    documented = set()
    for line in text.splitlines():
        stripped = line.lstrip("# ").split("=")[0].strip()
        if "=" in line and stripped.isidentifier():
            documented.add(stripped)
    keys = {
        "ae_title", "host", "port", "allowed_calling_aets", "max_associations",
        "data_dir", "database_url", "retention_days",
        "name", "action", "destinations",
        "strength", "send",
    }  # fmt: skip
    assert keys <= documented, f"undocumented keys: {sorted(keys - documented)}"
    assert "#" in text and raw  # commented, and not empty
    # The example leaves the strength to the built-in default, so changing
    # DEFAULT_STRENGTH changes what a copy of the example does.
    assert "strength" not in raw["model"]
    assert load_config(EXAMPLE, environ={}).model.strength == DEFAULT_STRENGTH


# --------------------------------------------------------------------------- through the CLI

CLI_CASES = [
    ('[node]\nport = "11112"\n', "node.port", "'11112'"),
    ('[node]\nae_title = "SEVENTEEN_CHARS_X"\n', "node.ae_title", "'SEVENTEEN_CHARS_X'"),
    ('[node]\nae_title = "BAD\\\\AET"\n', "node.ae_title", "'BAD\\\\AET'"),
    ('[node]\nae_title = "BELL\\u0007"\n', "node.ae_title", "'BELL\\x07'"),
    ("[node]\nport = 99999\n", "node.port", "99999"),
    ("[jobs]\nmax_attempts = 2.5\n", "jobs.max_attempts", "2.5"),
    ("[model]\nstrength = 1.5\n", "model.strength", "1.5"),
    (
        '[[rules]]\nname = "f"\naction = "forward"\nstrength = 0.7\n',
        "rules[0].strength",
        "0.7",
    ),
    ('[[rules]]\nname = "f"\naction = "forward"\nsend = false\n', "rules[0].send", "False"),
    ('[[rules]]\nname = "e"\naction = "enhance"\nsend = "no"\n', "rules[0].send", "'no'"),
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DICOM_NODE, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(("text", "key", "shown"), CLI_CASES, ids=[c[1] for c in CLI_CASES])
def test_config_check_exits_2_with_one_line(
    tmp_path: Path, text: str, key: str, shown: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dicom-node: error: {key}: ")
    assert shown in lines[0]


def test_serve_refuses_a_bad_configuration_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 0\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dicom-node: error: node.port: 0 is not a valid TCP port; expected 1 to 65535."
    )


def test_missing_or_unparsable_file_exits_2(tmp_path: Path) -> None:
    missing = run_cli("config", "check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nport = 1\n")
    result = run_cli("config", "check", "--config", str(broken))
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_config_check_reports_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        to_toml(
            {
                "node": {"ae_title": "CXR_NODE", "port": 11112},
                "destinations": [DEST],
                "rules": [{"name": "fwd", "action": "forward"}],
            }
        )
    )
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "destination pacs: PACS@127.0.0.1:104" in result.stdout
    assert "rule fwd: forward -> all destinations" in result.stdout


def test_config_check_shows_the_strengths(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        to_toml(
            {
                "model": {"strength": 0.8},
                "rules": [
                    {"name": "soft", "action": "enhance", "strength": 0.7},
                    {"name": "plain", "action": "enhance"},
                    {"name": "fwd", "action": "forward"},
                    {"name": "shadow", "action": "enhance", "send": False},
                ],
            }
        )
    )
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("  model: ") and line.endswith(", strength 0.80") for line in lines)
    assert "  rule soft: enhance -> all destinations, strength 0.70" in lines
    assert "  rule plain: enhance -> all destinations, strength 0.80" in lines
    assert "  rule fwd: forward -> all destinations" in lines
    assert (
        "  rule shadow: enhance -> none (shadow: kept, not sent; all destinations once "
        "send = true), strength 0.80"
    ) in lines


@pytest.mark.network
def test_an_environment_override_reaches_the_running_node(tmp_path: Path) -> None:
    port = free_port()
    document = {
        "node": {"ae_title": "NODE", "host": "127.0.0.1", "port": free_port()},
        "storage": {"data_dir": str(tmp_path / "data")},
        "rules": [{"name": "fwd", "action": "forward"}],
    }
    node = NodeProcess(
        tmp_path,
        document,
        env={"DICOM_NODE_NODE_PORT": str(port), "DICOM_NODE_NODE_AE_TITLE": "ENV_AET"},
    )
    try:
        node.start()
        assert echoscu(port, called="ENV_AET").returncode == 0
        assert echoscu(port, called="NODE").returncode != 0
    finally:
        node.kill()


# --------------------------------------------------------------------------- import graph


def test_the_module_graph_is_acyclic() -> None:
    """No import cycle, counting the imports inside functions (they only hide one)."""
    graph = import_graph(REPO)
    assert "dicom_node.model_store" not in graph["dicom_node.config"]
    assert "dicom_node.config" in graph["dicom_node.model_store"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    code = (
        "import importlib, pkgutil, dicom_node\n"
        "for info in pkgutil.walk_packages(dicom_node.__path__, 'dicom_node.'):\n"
        "    if info.name != 'dicom_node.migrations.env':  # run by alembic, not imported\n"
        "        importlib.import_module(info.name)\n"
    )
    for first in ("dicom_node.config", "dicom_node.model_store", "dicom_node.cli"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {first}\n{code}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, result.stderr
