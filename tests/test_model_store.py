"""Installed models: ``dicom-node model install`` / ``model list`` and their resolution.

The resolution order is ``[model] path`` (or ``--model``) > the installed
active model (``<data_dir>/models/active.json``) > the bundled model. Commands
run in process through :func:`dicom_node.cli.main`, with real ONNX models
built by :mod:`onnx_models` and validated by the node's own loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx_models import make_smoothing_model

from dicom_node.cli import main
from dicom_node.config import Config, ConfigError, ModelSettings, load_config
from dicom_node.model_store import (
    InstalledModel,
    active_record_path,
    install_model,
    installed_file_name,
    models_dir,
    read_active,
    resolve_installed_model,
)


def load(path: Path, environ: dict[str, str]) -> Config:
    """The configuration as the commands see it: with the installed model resolved."""
    return resolve_installed_model(load_config(path, environ=environ))


def write_config(tmp_path: Path, model_path: Path | None = None) -> Path:
    """A configuration with its own data_dir under `tmp_path` (and a model path if given)."""
    text = f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    if model_path is not None:
        text += f'[model]\npath = "{model_path}"\n'
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones included) with its bytes."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dicom-node: error: ")
    return lines[0]


@pytest.fixture
def model_a(tmp_path: Path) -> Path:
    return make_smoothing_model(tmp_path / "src" / "a.onnx", name="cxr-gen", version="1.0")


@pytest.fixture
def model_b(tmp_path: Path) -> Path:
    return make_smoothing_model(
        tmp_path / "src" / "b.onnx", name="cxr-gen", version="2.0", strength=0.7
    )


def install(config: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    rc = main(["model", "install", str(model), "--config", str(config)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out.splitlines()


# --------------------------------------------------------------------------- install


def test_install_then_load_config_resolves_to_the_installed_file(
    tmp_path: Path, model_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    assert load(config_path, environ={}).model.source == "bundled"

    lines = install(config_path, model_a, capsys)

    digest = sha256(model_a)
    installed = models_dir(data_dir(tmp_path)) / f"cxr-gen-1.0-{digest[:16]}.onnx"
    assert installed.read_bytes() == model_a.read_bytes()
    assert len(lines) == 2
    assert lines[0] == (
        f"Installed cxr-gen 1.0 (sha256 {digest[:16]}) as {installed}; it is the active model."
    )
    assert "next start" in lines[1] and "systemctl restart dicom-node" in lines[1]

    record = json.loads(active_record_path(data_dir(tmp_path)).read_text())
    assert record["file"] == installed.name
    assert record["sha256"] == digest
    assert (record["model_name"], record["model_version"]) == ("cxr-gen", "1.0")
    assert record["source"] == str(model_a.resolve())
    assert record["installed_at"].endswith("+00:00")

    config = load(config_path, environ={})
    assert config.model.path == installed
    assert config.model.source == "installed"


def test_model_info_reports_the_installed_source_and_hash(
    tmp_path: Path, model_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)

    assert main(["model", "info", "--json", "--config", str(config_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "installed"
    assert info["sha256"] == sha256(model_a)
    assert info["model_name"] == "cxr-gen" and info["model_version"] == "1.0"
    assert Path(info["path"]).parent == models_dir(data_dir(tmp_path))

    assert main(["model", "info", "--config", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert any(line.split() == ["source", "installed"] for line in text.splitlines())


def test_reinstalling_the_same_file_is_idempotent(
    tmp_path: Path, model_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)
    before = snapshot(models_dir(data_dir(tmp_path)))

    lines = install(config_path, model_a, capsys)

    assert snapshot(models_dir(data_dir(tmp_path))) == before
    assert "is installed and active already" in lines[0]
    assert sum(name.endswith(".onnx") for name in before) == 1


def _without_metadata(path: Path) -> Path:
    model = onnx.load(str(make_smoothing_model(path)))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    return path


def _garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an ONNX model\n")
    return path


def _wrong_convention(path: Path) -> Path:
    return make_smoothing_model(path, convention="uint8-0-255")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_without_metadata, "lacks the metadata pixel_convention, model_name"),
        (_garbage, "cannot be loaded"),
        (_wrong_convention, "pixel convention 'uint8-0-255'"),
        (lambda path: path, "does not exist"),
    ],
    ids=["no-metadata", "garbage", "wrong-convention", "missing"],
)
def test_a_refused_model_exits_1_with_one_line_and_changes_nothing(
    tmp_path: Path,
    model_a: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    reason: str,
) -> None:
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)
    before = snapshot(models_dir(data_dir(tmp_path)))
    bad = make(tmp_path / "src" / "bad.onnx")

    rc = main(["model", "install", str(bad), "--config", str(config_path)])

    line = one_error_line(capsys)
    assert rc == 1
    assert line.startswith(f"dicom-node: error: {bad} was not installed: ")
    assert reason in line
    assert snapshot(models_dir(data_dir(tmp_path))) == before
    assert (
        load(config_path, environ={}).model.path
        == models_dir(data_dir(tmp_path)) / json.loads(before["active.json"])["file"]
    )


def test_a_different_file_is_never_overwritten(
    tmp_path: Path, model_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    target = models_dir(data_dir(tmp_path)) / installed_file_name("cxr-gen", "1.0", sha256(model_a))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")

    rc = main(["model", "install", str(model_a), "--config", str(config_path)])

    assert rc == 1
    assert "exists with other content and is never overwritten" in one_error_line(capsys)
    assert target.read_bytes() == b"something else"
    assert not active_record_path(data_dir(tmp_path)).exists()


def test_installing_an_older_model_again_makes_it_active_and_keeps_both(
    tmp_path: Path, model_a: Path, model_b: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)
    install(config_path, model_b, capsys)
    assert load(config_path, environ={}).model.path is not None
    assert sha256(load(config_path, environ={}).model.path) == sha256(model_b)

    # Going back: install the kept file from the models folder itself.
    kept = models_dir(data_dir(tmp_path)) / installed_file_name("cxr-gen", "1.0", sha256(model_a))
    install(config_path, kept, capsys)

    config = load(config_path, environ={})
    assert config.model.path == kept
    files = sorted(p.name for p in models_dir(data_dir(tmp_path)).glob("*.onnx"))
    assert len(files) == 2


# --------------------------------------------------------------------------- list


def test_model_list_marks_the_active_one(
    tmp_path: Path, model_a: Path, model_b: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    assert main(["model", "list", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.startswith("No models are installed in ")

    install(config_path, model_a, capsys)
    install(config_path, model_b, capsys)
    assert main(["model", "list", "--config", str(config_path)]) == 0
    rows = capsys.readouterr().out.splitlines()

    name_a = installed_file_name("cxr-gen", "1.0", sha256(model_a))
    name_b = installed_file_name("cxr-gen", "2.0", sha256(model_b))
    row_a = next(row for row in rows if name_a in row)
    row_b = next(row for row in rows if name_b in row)
    assert row_b.split()[:5] == ["*", name_b, "cxr-gen", "2.0", sha256(model_b)[:16]]
    assert row_a.split()[:4] == [name_a, "cxr-gen", "1.0", sha256(model_a)[:16]]

    assert main(["model", "list", "--json", "--config", str(config_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    active = [m for m in listed["models"] if m["active"]]
    assert [m["sha256"] for m in active] == [sha256(model_b)]
    assert len(listed["models"]) == 2 and listed["active_error"] is None


# --------------------------------------------------------------------------- resolution


def test_an_explicit_model_path_wins_over_the_installed_one(
    tmp_path: Path, model_a: Path, model_b: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(write_config(tmp_path), model_a, capsys)
    config_path = write_config(tmp_path, model_path=model_b)

    config = load(config_path, environ={})
    assert config.model.path == model_b and config.model.source == "config"
    assert main(["model", "info", "--json", "--config", str(config_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "config" and info["sha256"] == sha256(model_b)

    # --model beats both.
    other = make_smoothing_model(tmp_path / "src" / "c.onnx", version="3.0")
    args = ["model", "info", "--json", "--config", str(config_path), "--model", str(other)]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "command line" and info["sha256"] == sha256(other)

    # The environment is part of the configuration: an empty path selects the installed model.
    config = load(config_path, environ={"DICOM_NODE_MODEL_PATH": ""})
    assert config.model.source == "installed"

    # install says that the configured path still takes precedence.
    lines = install(config_path, model_b, capsys)
    assert any("takes precedence over the installed model" in line for line in lines)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "which does not exist in"),
        ("{not json", "is invalid: it is not valid JSON"),
        ('{"file": "x.onnx"}', "is invalid: it lacks the text value(s) sha256"),
    ],
    ids=["dangling", "not-json", "incomplete"],
)
def test_a_broken_active_record_is_a_configuration_error(
    tmp_path: Path,
    model_a: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    reason: str,
) -> None:
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)
    record = active_record_path(data_dir(tmp_path))
    if content is None:
        (models_dir(data_dir(tmp_path)) / json.loads(record.read_text())["file"]).unlink()
    else:
        record.write_text(content)

    with pytest.raises(ConfigError, match="installed-model record"):
        load(config_path, environ={})
    for command in (["config", "check"], ["model", "info"]):
        assert main([*command, "--config", str(config_path)]) == 2
        line = one_error_line(capsys)
        assert str(record) in line and reason in line

    # An explicit path does not read the record; installing again repairs it.
    assert load(write_config(tmp_path, model_a), environ={}).model.source == "config"
    config_path = write_config(tmp_path)
    install(config_path, model_a, capsys)
    assert load(config_path, environ={}).model.source == "installed"


# --------------------------------------------------------------------------- units


def test_installed_file_names_are_sanitised() -> None:
    digest = "0123456789abcdef" + "0" * 48
    assert installed_file_name("cxr gen/π", "1.0+rc 2", digest) == (
        "cxr_gen_-1.0_rc_2-0123456789abcdef.onnx"
    )
    assert installed_file_name("..", "", digest) == "model-0-0123456789abcdef.onnx"
    with pytest.raises(ValueError, match="sha256"):
        installed_file_name("a", "1", "xyz")


def test_a_record_naming_a_path_is_refused(tmp_path: Path, model_a: Path) -> None:
    install_model(model_a, tmp_path)
    record = InstalledModel.from_json(active_record_path(tmp_path).read_text())
    bad = json.dumps({**json.loads(record.to_json()), "file": "../a.onnx"})
    active_record_path(tmp_path).write_text(bad)
    with pytest.raises(ConfigError, match=r"file '\.\./a\.onnx' is not the name of an \.onnx file"):
        read_active(tmp_path)


def test_model_settings_source() -> None:
    assert ModelSettings().source == "bundled"
    assert ModelSettings(path=Path("m.onnx")).source == "config"
    assert ModelSettings(path=Path("m.onnx"), path_source="installed").source == "installed"
    with pytest.raises(ValueError, match="path_source: 'elsewhere' is not one of"):
        ModelSettings(path_source="elsewhere")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- without a file


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder without config/node.toml, no DICOM_NODE_* variable set."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in [n for n in os.environ if n.startswith("DICOM_NODE_")]:
        monkeypatch.delenv(name)
    return work


def test_environment_applies_without_a_configuration_file(
    no_config_file: Path,
    model_a: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["model", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "bundled"

    monkeypatch.setenv("DICOM_NODE_MODEL_PATH", str(model_a))
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "config" and info["sha256"] == sha256(model_a)

    monkeypatch.setenv("DICOM_NODE_MODEL_TILE_SIZE", "1000")
    assert main(["model", "info"]) == 2
    assert "model.tile_size: 1000 is not a multiple of 256" in one_error_line(capsys)


def test_a_model_path_that_does_not_exist_is_an_error(
    no_config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DICOM_NODE_MODEL_PATH", "/nonexistent.onnx")
    expected = "dicom-node: error: model.path: '/nonexistent.onnx' does not exist or is not a file."
    for command in (["model", "info"], ["enhance", "x.png", "-o", str(tmp_path / "out")]):
        assert main(command) == 2
        assert one_error_line(capsys) == expected
    assert not (tmp_path / "out").exists()
    # The same with a file that names it, and through the console script.
    config_path = write_config(tmp_path, model_path=Path("/nonexistent.onnx"))
    monkeypatch.delenv("DICOM_NODE_MODEL_PATH")
    with pytest.raises(ConfigError, match=r"model\.path: ./nonexistent\.onnx. does not exist"):
        load_config(config_path, environ={})
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dicom-node"), "model", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DICOM_NODE_MODEL_PATH": "/nonexistent.onnx"},
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", expected + "\n")


def test_the_installed_model_resolves_without_a_configuration_file(
    no_config_file: Path,
    model_a: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_model(model_a, no_config_file / "var")
    assert main(["model", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "installed"
    monkeypatch.setenv("DICOM_NODE_STORAGE_DATA_DIR", str(no_config_file / "elsewhere"))
    assert main(["model", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "bundled"
