"""training.probe: the synthetic probes of a model through the node's Enhancer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_node.inference import bundled_model_path
from training.probe import LINE_CONTRAST, line_image, line_scores, main, probe


def test_line_scores_measure_what_the_output_kept() -> None:
    image = line_image(300)
    assert image.shape == (512, 512)
    assert float(image[:, 300].mean() - image[:, 297].mean()) == pytest.approx(
        LINE_CONTRAST, abs=0.002
    )
    # An output that keeps everything: kept 1, nothing beside it, no pattern.
    same = line_scores(image, image, 300)
    assert same["kept"] == pytest.approx(1.0) and same["beside"] == 0.0
    # An output that removed the line keeps about nothing of it.
    removed = image.copy()
    removed[:, 300] -= LINE_CONTRAST
    assert abs(line_scores(image, removed, 300)["kept"]) < 0.1
    # A checkerboard added beside the line shows up in the diagonal amplitude.
    checker = image + 0.001 * ((-1.0) ** np.add.outer(np.arange(512), np.arange(512)))
    assert line_scores(image, checker.astype(np.float32), 300)["diagonal"] > 5e-4


def test_probe_runs_every_probe_on_a_model(tmp_path: Path) -> None:
    lines = probe(bundled_model_path(), [tmp_path / "missing.png"])
    assert sum(line.startswith("flat") for line in lines) == 3
    assert sum(line.startswith("noise SD") for line in lines) == 3
    assert sum(line.startswith("1-px line") for line in lines) == 4
    assert lines[-1].startswith("missing.png: skipped")


def test_missing_model_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
