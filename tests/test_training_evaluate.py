"""Evaluation on a tiny test split: metrics, baselines, the tables, the grids, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from training.cli import main
from training.data import load_images, make_examples
from training.degrade import Degradation
from training.evaluate import (
    ACCEPTANCE,
    BLUR_ONLY,
    BM3D,
    CORRELATED,
    HARSHER,
    IDENTITY,
    INPUT,
    L1,
    NLM,
    PIX2PIX,
    SCORE_KEYS,
    EvaluationSettings,
    GroupKind,
    Window,
    central_window,
    context_window,
    nlm,
    normalise_setting,
    run_evaluation,
    setting_degradation,
    setting_kind,
    strength_label,
    tune_factor,
)
from training.export import export_checkpoint
from training.metrics import psnr, ssim
from training.networks import GeneratorConfig
from training.sources import folder_records
from training.split import split_records
from training.train_config import TrainConfig
from training.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_run")
    for index in range(6):
        smooth = ndimage.gaussian_filter(np.random.default_rng(index).random((200, 180)), 4.0)
        smooth = (smooth - smooth.min()) / np.ptp(smooth)
        Image.fromarray(np.rint((0.1 + 0.8 * smooth) * 255).astype(np.uint8)).save(
            root / f"img_{index}.png"
        )
    split = split_records(folder_records([root]), (0.5, 0.25, 0.25), seed=1)
    config = TrainConfig(
        epochs=1,
        epochs_decay=0,
        generator=GeneratorConfig(ngf=4),
        l1_only=True,
        val_degradation=Degradation(),
    )
    train(config, split, root / "run", progress=False)
    export_checkpoint(root / "run" / "best.pt", root / "run" / "model.onnx")
    return root / "run"


def test_metrics_declare_the_data_range() -> None:
    reference = np.full((32, 32), 0.5)
    image = reference + 0.01
    assert psnr(reference, image) == pytest.approx(40.0)
    assert psnr(reference, reference) == float("inf")
    assert ssim(reference, reference) == pytest.approx(1.0)
    # The same error scores the same whatever the images' own ranges are.
    assert psnr(reference * 0.1, image * 0.1 + 0.009) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(reference, reference[:8])


def test_nlm_is_tuned_on_validation_crops() -> None:
    rng = np.random.default_rng(0)
    clean = ndimage.gaussian_filter(rng.random((96, 96)), 4.0)
    clean = 0.2 + 0.6 * (clean - clean.min()) / np.ptp(clean)
    noisy = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    from training.data import Example

    examples = [Example("x", noisy, clean.astype(np.float32), 8)]
    best, scores = tune_factor(nlm, examples, (0.1, 1.0), max_extensions=0)
    assert best == 1.0 and scores["1"] > scores["0.1"] > psnr(clean, noisy)


def test_tuning_extends_a_grid_whose_edge_wins() -> None:
    calls: list[float] = []

    def restorer(image: np.ndarray, factor: float) -> np.ndarray:
        # Best at factor 0.25: the output moves towards the reference as the
        # factor approaches it from either side.
        calls.append(factor)
        weight = max(0.0, 1.0 - abs(np.log(factor / 0.25)))
        return (1 - weight) * image + weight * reference

    from training.data import Example

    rng = np.random.default_rng(1)
    reference = rng.random((64, 64)).astype(np.float32)
    noisy = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1).astype(np.float32)
    best, scores = tune_factor(restorer, [Example("x", noisy, reference, 8)], (0.5, 1.0))
    # 0.5 won at the lower edge, so 0.5/1.4 and 0.5/1.4² were tried; the optimum is inside.
    assert best == pytest.approx(0.5 / 1.4**2, abs=1e-3)
    assert min(float(k) for k in scores) < best < max(float(k) for k in scores)
    assert len(calls) == len(scores) == 5
    # Without extensions the edge stays the answer.
    best_edge, _ = tune_factor(restorer, [Example("x", noisy, reference, 8)], (0.5, 1.0), 0)
    assert best_edge == 0.5


def test_evaluation_table_on_a_tiny_set(run: Path, tmp_path: Path) -> None:
    settings = EvaluationSettings(
        settings=((0.002, 2e-5, 0.8), (0.004, 5e-5, 1.2)),
        bm3d_settings=((0.002, 2e-5, 0.8),),
        tune_images=1,
        grid_cases=1,
        seed=5,
        max_images=1,
    )
    out = tmp_path / "eval"
    result = run_evaluation(run, run / "model.onnx", out, settings, l1_model=run / "best.pt")
    label = Degradation(0.002, 2e-5, 0.8).label()
    methods = result.results[label]
    assert list(methods) == [INPUT, NLM, BM3D, L1, PIX2PIX]
    harsher = result.results[Degradation(0.004, 5e-5, 1.2).label()]
    assert list(harsher) == [INPUT, NLM, L1, PIX2PIX]  # BM3D only where asked for
    assert harsher[INPUT]["psnr"] < methods[INPUT]["psnr"]
    assert result.test_images == 1
    assert 1.0 >= methods[NLM]["ssim"] > methods[INPUT]["ssim"]
    assert methods[NLM]["psnr"] > methods[INPUT]["psnr"]
    # The input row is exactly the metric of the degraded test image.
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    test_records = [r for r in split["records"] if r["split"] == "test"]
    from training.records import PairRecord

    records = [PairRecord(**r) for r in test_records][:1]
    images = load_images(r.high for r in records)
    (example,) = make_examples(records, images, Degradation(0.002, 2e-5, 0.8), seed=5)
    assert methods[INPUT]["psnr"] == pytest.approx(psnr(example.reference, example.degraded))
    assert result.nlm[label]["factor"] in (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)
    # The checkpoint and the ONNX export of the same generator score the same.
    assert methods[L1]["psnr"] == pytest.approx(methods[PIX2PIX]["psnr"], abs=1e-3)

    table = result.table()
    for name in (INPUT, NLM, BM3D, L1, PIX2PIX, label, "ΔPSNR vs NLM"):
        assert name in table
    saved = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["results"][label][NLM]["psnr"] == pytest.approx(methods[NLM]["psnr"])
    assert "data_range=1.0" in saved["metric_definitions"]["psnr"]
    report = (out / "evaluation.md").read_text(encoding="utf-8").strip()
    assert report == result.report() and table in report
    with Image.open(out / "grid_1.png") as grid:
        # 7 panels: input, NLM, BM3D, L1, pix2pix, reference, difference.
        assert grid.mode == "L" and grid.width == 7 * (180 + 4)


def test_cli_evaluate_and_its_errors(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "evaluate",
        "--run-dir",
        str(run),
        "--model",
        str(run / "model.onnx"),
        "--setting",
        "0.004,5e-5,1.2,0.5",
        "--no-bm3d",
        "--tune-images",
        "1",
        "--grid-cases",
        "0",
        "--strength",
        "0.8",
        "--crop",
        "128",
        "--detail-images",
        "1",
        "--max-images",
        "1",
        "--output-dir",
        str(tmp_path / "e"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| a=0.004 b=5e-05 σ=1.2 corr=0.5px | pix2pix generator |" in out and BM3D not in out
    assert "| a=0.004 b=5e-05 σ=1.2 corr=0.5px | pix2pix generator @0.8 |" in out
    assert "## Detail retention" in out and "## Targets" in out
    saved = json.loads((tmp_path / "e" / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["protocol"]["crop"] == 128 and saved["per_image"]
    assert saved["per_image"]["a=0.004 b=5e-05 σ=1.2 corr=0.5px"][0]["crop"][2:] == [128, 128]
    assert not list((tmp_path / "e").glob("grid_*.png"))
    assert main(["evaluate", "--run-dir", str(tmp_path), "--model", str(run / "model.onnx")]) == 1
    assert capsys.readouterr().err.startswith("dicom-node-train: error:")
    assert main(["evaluate", "--run-dir", str(run), "--model", str(tmp_path / "none.onnx")]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run-dir", str(run), "--model", "m.onnx", "--setting", "1,2"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--run-dir",
                str(run),
                "--model",
                "m.onnx",
                "--setting",
                "0.002,2e-5,0.8",
                "--bm3d-setting",
                "0.004,5e-5,1.2",
            ]
        )
    assert exit_info.value.code == 2
    assert "not one of the settings" in capsys.readouterr().err
    for bad in (
        ["--strength", "1.5"],
        ["--setting", "0.002,2e-5,0.8,1,2"],
        ["--detail-setting", "0.004,5e-5,1.2"],
        ["--bm3d-profile", "fast"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--run-dir", str(run), "--model", "m.onnx", *bad])
        assert exit_info.value.code == 2, bad


def test_real_pairs_form_their_own_group(run: Path, tmp_path: Path) -> None:
    from training.evaluate import REAL_PAIRS
    from training.records import PairRecord
    from training.split import Split

    records = []
    for index, split in enumerate(("val", "test", "test")):
        rng = np.random.default_rng(10 + index)
        clean = ndimage.gaussian_filter(rng.random((160, 150)), 4.0)
        clean = 0.2 + 0.6 * (clean - clean.min()) / np.ptp(clean)
        noisy = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1)
        paths = []
        for name, array in (("high", clean), ("low", noisy)):
            path = tmp_path / f"{name}_{index}.png"
            Image.fromarray(np.rint(array * 255).astype(np.uint8)).save(path)
            paths.append(str(path))
        records.append(PairRecord(paths[0], paths[1], f"g{index}", split))
    real_run = tmp_path / "real_run"
    real_run.mkdir()
    Split(0, (0.0, 0.5, 0.5), records).save(real_run / "split.json")
    settings = EvaluationSettings(bm3d=False, grid_cases=0, tune_images=1)
    result = run_evaluation(real_run, run / "model.onnx", tmp_path / "out", settings)
    assert list(result.results) == [REAL_PAIRS]
    scores = result.results[REAL_PAIRS]
    assert result.test_images == 2 and scores[NLM]["psnr"] > scores[INPUT]["psnr"]


def test_settings_take_a_correlation_and_the_identity() -> None:
    assert normalise_setting((0.002, 2e-5, 0.8)) == ACCEPTANCE
    assert setting_degradation(CORRELATED).noise_correlation == 1.0
    assert setting_degradation(IDENTITY).is_identity
    kinds = [setting_kind(s) for s in (ACCEPTANCE, CORRELATED, BLUR_ONLY, IDENTITY)]
    assert kinds == [GroupKind.WHITE, GroupKind.CORRELATED, GroupKind.BLUR, GroupKind.IDENTITY]
    defaults = EvaluationSettings()
    assert defaults.settings == (ACCEPTANCE, CORRELATED, BLUR_ONLY, IDENTITY)
    # BM3D only at the two acceptance settings; detail retention at the white one.
    assert defaults.bm3d_at() == (ACCEPTANCE, CORRELATED) and defaults.detail_at() == ACCEPTANCE
    harsher = EvaluationSettings(settings=(HARSHER[:3], IDENTITY))
    assert harsher.bm3d_at() == (HARSHER,) and harsher.detail_at() == HARSHER
    assert EvaluationSettings(detail_images=0).detail_at() is None
    assert EvaluationSettings(bm3d=False).bm3d_at() == ()
    for kwargs, message in (
        ({"detail_setting": HARSHER}, "not one of the settings"),
        ({"strengths": (1.5,)}, "strength"),
        ({"crop": 32}, "crop"),
        ({"settings": (ACCEPTANCE, ACCEPTANCE[:3])}, "twice"),
        ({"settings": ((0.002, 2e-5),)}, "A,B,SIGMA"),
        ({"workers": 0}, "workers"),
    ):
        with pytest.raises(ValueError, match=message):
            EvaluationSettings(**kwargs)


def test_crop_and_context_windows() -> None:
    window = central_window((1000, 600), 768)
    assert window == Window(116, 0, 768, 600)
    assert central_window((1000, 600), 0) == Window(0, 0, 1000, 600)
    context = context_window((1000, 600), window, 32)
    assert context == Window(84, 0, 832, 600)  # no room on the left and right
    image = np.arange(1000 * 600, dtype=np.float64).reshape(1000, 600)
    rows, cols = window.inside(context)
    assert np.array_equal(context.cut(image)[rows, cols], window.cut(image))


def test_every_table_on_a_tiny_run(run: Path, tmp_path: Path) -> None:
    settings = EvaluationSettings(
        settings=(ACCEPTANCE, CORRELATED, BLUR_ONLY, IDENTITY),
        bm3d=False,
        strengths=(0.0, 0.5),
        tune_images=1,
        grid_cases=1,
        detail_images=2,
        max_images=2,
        seed=3,
    )
    out = tmp_path / "eval"
    result = run_evaluation(run, run / "model.onnx", out, settings, l1_model=run / "best.pt")
    labels = [setting_degradation(s).label() for s in settings.settings]
    assert list(result.results) == labels
    white, correlated, blur, identity = (result.results[label] for label in labels)
    at_zero, at_half = strength_label(0.0), strength_label(0.5)
    assert list(white) == [INPUT, NLM, L1, PIX2PIX, at_zero, at_half]
    for methods in result.results.values():
        for name, scores in methods.items():
            assert set(SCORE_KEYS) <= set(scores), name
            assert 0 < scores["gms"] <= 1 and scores["hf_ratio"] > 0, name
            assert 0 < scores["period2_ratio"] <= scores["period2_ratio_max"], name
    # Strength 0 is the input itself; the input's period-2 ratio and residual noise are 1.
    assert white[at_zero]["psnr"] == white[INPUT]["psnr"]
    assert white[INPUT]["period2_vs_input"] == 1.0 and white[INPUT]["lung_residual"] == 1.0
    # Against the larger of input and reference, the input itself scores at most 1.
    assert white[INPUT]["period2_ratio"] <= 1.0
    assert correlated[INPUT]["psnr"] != white[INPUT]["psnr"]
    assert blur[NLM]["psnr"] == pytest.approx(blur[INPUT]["psnr"], abs=0.5)  # nothing to denoise
    # Identity: no input row (it is the reference), NLM with the acceptance factor.
    assert INPUT not in identity and math.isinf(identity[at_zero]["psnr"])
    assert result.nlm[labels[3]] == {"factor": result.nlm[labels[0]]["factor"], "from": labels[0]}
    assert math.isnan(identity[PIX2PIX]["lung_residual"])

    # Detail retention: the inserts went into two images at the acceptance setting.
    info = result.detail
    assert info["setting"] == labels[0] and len(info["images"]) == 2
    assert info["inserts"] and info["per_insert"]
    # The template is the clean insert: the input, blurred by the degradation,
    # keeps less than all of it, least of the thin lines.
    assert "clean insert" in info["template"] and "sigma 0.8 px" in info["template"]
    for label, by_method in info["inserts"].items():
        assert 0.4 < by_method[INPUT]["retained"] < 1.05, label
        if label.startswith("line 1 px"):
            assert by_method[INPUT]["retained"] < 0.75, label
        if label.startswith("disc 16 px"):
            assert by_method[INPUT]["retained"] == pytest.approx(1.0, abs=0.1), label
        assert by_method[at_zero]["retained"] == by_method[INPUT]["retained"]
        assert by_method[L1]["retained"] == pytest.approx(by_method[PIX2PIX]["retained"], abs=1e-3)
    for row in info["per_insert"]:
        assert 0 < row["row"] < 200 and 0 < row["col"] < 180

    # The twins (the same generator here) and the targets.
    assert set(result.comparison) == set(labels)
    assert result.comparison[labels[0]]["psnr_delta"] == pytest.approx(0.0, abs=1e-3)
    names = {(t["name"], t["method"], t["setting"]) for t in result.targets}
    assert ("ΔPSNR vs input", PIX2PIX, labels[0]) in names
    assert ("ΔPSNR vs NLM", at_half, labels[0]) in names
    for label in labels:
        assert ("period-2 ratio, worst image", PIX2PIX, label) in names
    assert all(t["passed"] in (True, False) for t in result.targets)

    report = result.report()
    for title in (
        "## Scores on the test split",
        "## Noise in lung and dense regions",
        "## Detail retention",
        "## pix2pix vs L1-only generator",
        "## Targets",
        "## Notes",
        "| insert | degraded input |",
        "| setting | PSNR L1 | PSNR pix2pix |",
        "| setting | method | lung: residual noise |",
        f"| {labels[2]} | {PIX2PIX} |",
    ):
        assert title in report, title
    assert (out / "evaluation.md").read_text(encoding="utf-8").strip() == report

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in evaluation.json")

    saved = json.loads(
        (out / "evaluation.json").read_text(encoding="utf-8"), parse_constant=no_constants
    )
    assert saved["results"][labels[3]][at_zero]["psnr"] is None  # infinite
    assert len(saved["per_image"][labels[0]]) == 2 and saved["groups"][labels[1]]["kind"] == (
        "correlated noise"
    )
    assert {"load images", "tuning", *labels, "total"} <= set(saved["timings"])
    assert sorted(p.name for p in out.glob("grid_*.png")) == [f"grid_{i}.png" for i in range(1, 5)]


def test_worker_processes_give_the_same_numbers(run: Path, tmp_path: Path) -> None:
    common = {
        "settings": (ACCEPTANCE,),
        "bm3d": False,
        "tune_images": 1,
        "grid_cases": 0,
        "detail_images": 1,
        "max_images": 1,
    }
    inline = run_evaluation(run, run / "model.onnx", tmp_path / "a", EvaluationSettings(**common))
    pooled = run_evaluation(
        run, run / "model.onnx", tmp_path / "b", EvaluationSettings(**common, workers=2)
    )
    assert pooled.per_image == inline.per_image and pooled.nlm == inline.nlm
    assert pooled.detail["per_insert"] == inline.detail["per_insert"]
