"""Export a trained generator to ONNX, with metadata and a parity gate.

The exported graph is :class:`training.networks.ResidualEnhancer`: one input
``image`` and one output ``enhanced``, float32 (N, 1, H, W) in the node's
[0, 1] pixel convention, with dynamic batch, height and width (H and W must be
multiples of 256). The scaling to [-1, 1], the residual addition and the
final clamp to [0, 1] are inside the graph.

The parity gate runs the ONNX model with onnxruntime (CPU) and the PyTorch
module on random inputs and on real radiographs and refuses the export (the
file is removed) when the largest absolute difference exceeds the tolerance:
:data:`FP32_TOLERANCE` for the float32 model and :data:`FP16_TOLERANCE` for the
optional float16 model, whose weights and arithmetic are float16 except the
normalisation layers, which stay float32; its input and output stay float32.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME, file_sha256
from dicom_node.pixels import CONVENTION, read_any
from training.metrics import METRIC_DEFINITIONS
from training.networks import SIZE_MULTIPLE, ResidualEnhancer, count_parameters
from training.train import load_generator

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
"""Largest absolute difference (in [0, 1] units) allowed between the float32
ONNX model and PyTorch: about 0.03 of an 8-bit step, 6.5 of a 16-bit step."""

FP16_TOLERANCE = 1e-2
"""Largest absolute difference allowed between the float16 model and PyTorch."""

MIN_OPSET = 17
FP32_KEEP_OPS = ("InstanceNormalization",)
"""Operators the float16 model keeps in float32."""


class ExportError(RuntimeError):
    """The export failed or the exported model failed the parity gate."""


@dataclass(frozen=True)
class ExportSettings:
    """How to export.

    Attributes
    ----------
    name, version : str
        ``model_name`` and ``model_version`` metadata.
    opset : int
        ONNX opset (17 or newer).
    tolerance, fp16_tolerance : float or None
        Parity limits; None uses :data:`FP32_TOLERANCE` / :data:`FP16_TOLERANCE`.
    """

    name: str = "cxr-pix2pix"
    version: str = "1.0.0"
    opset: int = MIN_OPSET
    tolerance: float | None = None
    fp16_tolerance: float | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 64:
            raise ValueError(f"name must be 1 to 64 characters; got {self.name!r}.")
        if not self.version.strip() or len(self.version) > 64:
            raise ValueError(f"version must be 1 to 64 characters; got {self.version!r}.")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be {MIN_OPSET} or newer; got {self.opset}.")
        for label, value in (
            ("tolerance", self.tolerance),
            ("fp16_tolerance", self.fp16_tolerance),
        ):
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{label} must be in (0, 1); got {value}.")


@dataclass
class ParityResult:
    """Largest absolute difference per parity input, and the limit."""

    label: str
    tolerance: float
    differences: dict[str, float] = field(default_factory=dict)

    @property
    def max_difference(self) -> float:
        """The largest difference over all inputs."""
        return max(self.differences.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every difference is within the tolerance."""
        return self.max_difference <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "tolerance": self.tolerance,
            "max_abs_difference": self.max_difference,
            "inputs": len(self.differences),
        }


@dataclass
class ExportReport:
    """What an export wrote and how it checked."""

    output: Path
    sha256: str
    parity: ParityResult
    fp16_output: Path | None = None
    fp16_sha256: str | None = None
    fp16_parity: ParityResult | None = None

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = [
            f"wrote {self.output} ({self.output.stat().st_size / 1e6:.1f} MB, "
            f"sha256 {self.sha256})",
            f"parity fp32: max |onnx - torch| = {self.parity.max_difference:.2e} "
            f"<= {self.parity.tolerance:.0e} on {len(self.parity.differences)} inputs",
        ]
        if self.fp16_output is not None and self.fp16_parity is not None:
            out += [
                f"wrote {self.fp16_output} ({self.fp16_output.stat().st_size / 1e6:.1f} MB, "
                f"sha256 {self.fp16_sha256})",
                f"parity fp16: max |onnx - torch| = {self.fp16_parity.max_difference:.2e} "
                f"<= {self.fp16_parity.tolerance:.0e} on {len(self.fp16_parity.differences)} "
                "inputs",
            ]
        return out


def to_onnx_model(generator: ResidualEnhancer, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """Trace the generator into an ONNX model with dynamic batch, height and width."""
    generator = generator.eval().cpu()
    dims = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one,
            # which needs onnxscript; it still gives the plain, static graph we want.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                generator,
                (torch.rand(1, 1, SIZE_MULTIPLE, SIZE_MULTIPLE),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
                do_constant_folding=True,
            )
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def convert_fp16(
    model: onnx.ModelProto, keep_fp32: Sequence[str] = FP32_KEEP_OPS
) -> onnx.ModelProto:
    """A float16 copy of a float32 model whose input and output stay float32.

    Float initializers and Constant tensors become float16 (except the roi and
    scales of Resize, which stay float32); a Cast after the
    input and before the output keeps the interface float32. Operators named
    in `keep_fp32` get their float inputs cast to float32 and their outputs
    back to float16.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    # Resize takes its roi and scales as float32 whatever the data type: the
    # bilinear upsampling of the decoder must keep them.
    fixed_fp32 = {
        name for node in graph.node if node.op_type == "Resize" for name in node.input[1:] if name
    }
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in fixed_fp32:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    for node in graph.node:
        if node.op_type == "Constant" and not set(node.output) & fixed_fp32:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    array = numpy_helper.to_array(attr.t).astype(np.float16)
                    attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
    inner_in, inner_out = f"{INPUT_NAME}_fp16", f"{OUTPUT_NAME}_fp16"
    for node in graph.node:
        node.input[:] = [inner_in if name == INPUT_NAME else name for name in node.input]
        node.output[:] = [inner_out if name == OUTPUT_NAME else name for name in node.output]
    nodes = [helper.make_node("Cast", [INPUT_NAME], [inner_in], to=TensorProto.FLOAT16)]
    for index, node in enumerate(graph.node):
        if node.op_type not in keep_fp32:
            nodes.append(node)
            continue
        inputs, outputs = [], []
        for k, name in enumerate(node.input):
            cast = f"{name}_fp32_{index}_{k}"
            nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT))
            inputs.append(cast)
        for name in node.output:
            outputs.append(f"{name}_fp32")
        nodes.append(
            helper.make_node(
                node.op_type, inputs, outputs, name=node.name, domain=node.domain or None
            )
        )
        nodes[-1].attribute.extend(node.attribute)
        for name in node.output:
            nodes.append(helper.make_node("Cast", [f"{name}_fp32"], [name], to=TensorProto.FLOAT16))
    nodes.append(helper.make_node("Cast", [inner_out], [OUTPUT_NAME], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(converted)
    return converted


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with `props` (all values strings)."""
    del model.metadata_props[:]
    for key, value in props.items():
        if not isinstance(value, str):
            raise TypeError(
                f"Metadata value of {key!r} must be a string; got {type(value).__name__}."
            )
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _session(model: onnx.ModelProto | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity_inputs(real: Sequence[np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Random and real (N, 1, H, W) inputs for the parity check.

    Random inputs cover odd batch sizes and non-square shapes; real images are
    centre-cropped to at most 1024 pixels and reflect-padded to multiples of 256.
    """
    rng = np.random.default_rng(seed)
    inputs = {
        "uniform 1x256x256": rng.random((1, 1, 256, 256), dtype=np.float32),
        "uniform 3x256x512": rng.random((3, 1, 256, 512), dtype=np.float32),
        "smooth+noise 1x512x256": np.clip(
            np.linspace(0, 1, 512 * 256, dtype=np.float32).reshape(1, 1, 512, 256)
            + 0.05 * rng.standard_normal((1, 1, 512, 256)).astype(np.float32),
            0,
            1,
        ),
    }
    for index, image in enumerate(real):
        rows, cols = min(image.shape[0], 1024), min(image.shape[1], 1024)
        top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
        crop = image[top : top + rows, left : left + cols]
        pad_r, pad_c = -rows % SIZE_MULTIPLE, -cols % SIZE_MULTIPLE
        padded = np.pad(crop, ((0, pad_r), (0, pad_c)), mode="reflect")
        inputs[f"real #{index + 1} {padded.shape[0]}x{padded.shape[1]}"] = padded[
            None, None
        ].astype(np.float32)
    return inputs


def check_parity(
    generator: ResidualEnhancer,
    model: onnx.ModelProto | Path,
    inputs: dict[str, np.ndarray],
    tolerance: float,
    label: str = "fp32",
) -> ParityResult:
    """Largest |onnx - torch| per input; see :attr:`ParityResult.passed`.

    Raises
    ------
    ExportError
        If onnxruntime cannot load or run the model.
    """
    result = ParityResult(label, tolerance)
    try:
        session = _session(model)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the {label} model: {exc}") from exc
    generator = generator.eval().cpu()
    for name, array in inputs.items():
        with torch.no_grad():
            expected = generator(torch.from_numpy(array)).numpy()
        try:
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot run the {label} model on {name}: {exc}") from exc
        if actual.shape != expected.shape or actual.dtype != np.float32:
            raise ExportError(
                f"The {label} model returned {actual.dtype} {actual.shape} for {name}; expected "
                f"float32 {expected.shape}."
            )
        result.differences[name] = float(np.abs(actual.astype(np.float64) - expected).max())
    return result


def build_metadata(
    meta: dict[str, Any],
    generator: ResidualEnhancer,
    settings: ExportSettings,
    evaluation: dict[str, Any] | None,
    parity: dict[str, Any],
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model, from its checkpoint entries.

    Keys: ``pixel_convention``, ``model_name``, ``model_version``,
    ``size_multiple``, ``training_data``, ``degradation``, ``metrics``,
    ``training_commit``, ``training_code_sha256``, ``architecture``,
    ``training``, ``export`` and ``created_at``; structured values are JSON.
    """
    train_config = meta.get("train_config", {})
    best = meta.get("metrics", meta.get("best_metrics", {}))
    metrics: dict[str, Any] = {
        "definitions": METRIC_DEFINITIONS,
        "validation": {
            "epoch": meta.get("best_epoch"),
            "degradation": train_config.get("val_degradation"),
            "images": meta.get("data", {}).get("split", {}).get("val", {}).get("images"),
            "psnr": best.get("val_psnr"),
            "ssim": best.get("val_ssim"),
        },
    }
    if evaluation is not None:
        metrics["test"] = {
            "images": evaluation.get("test_images"),
            "results": evaluation.get("results"),
            "nlm": evaluation.get("nlm"),
            "bm3d": evaluation.get("bm3d"),
        }
    l1_only = bool(train_config.get("l1_only", False))
    architecture = {
        "generator": {
            **generator.config.as_dict(),
            "parameters": count_parameters(generator),
        },
        "discriminator": None
        if l1_only
        else {"type": "conditional PatchGAN 70x70", "ndf": train_config.get("ndf")},
        "loss": "L1" if l1_only else f"vanilla GAN + {train_config.get('lambda_l1', 100.0):g} * L1",
    }
    training = {
        key: train_config.get(key)
        for key in (
            "epochs",
            "epochs_decay",
            "batch_size",
            "crop",
            "crops_per_image",
            "lr",
            "lr_d",
            "beta1",
            "seed",
        )
    }
    training.update({k: meta.get(k) for k in ("device", "world_size", "torch", "start_from")})
    degradation = {
        "training_range": train_config.get("degradations"),
        "validation": train_config.get("val_degradation"),
        "model": "x^gamma + offset field -> gaussian blur -> optional 2x down/up -> "
        "noise N(0, a*x + b) -> quantise to source bits",
    }
    return {
        "pixel_convention": CONVENTION,
        "model_name": settings.name,
        "model_version": settings.version,
        "size_multiple": str(SIZE_MULTIPLE),
        "training_data": json.dumps(meta.get("data", {}), sort_keys=True),
        "degradation": json.dumps(degradation, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True),
        "training_commit": str(meta.get("training_commit", "uncommitted")),
        "training_code_sha256": str(meta.get("training_code_sha256", "")),
        "architecture": json.dumps(architecture, sort_keys=True),
        "training": json.dumps(training, sort_keys=True),
        "export": json.dumps(parity, sort_keys=True),
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def _parity_images(
    meta: dict[str, Any], paths: Sequence[Path], checkpoint: Path
) -> list[np.ndarray]:
    if paths:
        return [read_any(p).pixels for p in paths]
    split_file = checkpoint.resolve().parent / "split.json"
    if not split_file.is_file():
        return []
    from training.pairs import Split

    split = Split.load(split_file)
    records = split.subset("test") or split.subset("val")
    out = []
    for record in records[:2]:
        path = Path(record.low or record.high)
        if path.is_file():
            out.append(read_any(path).pixels)
    return out


def _write(model: onnx.ModelProto, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    onnx.save(model, str(tmp))
    os.replace(tmp, output)


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    settings: ExportSettings | None = None,
    evaluation: Path | None = None,
    parity_images: Sequence[Path] = (),
    fp16_output: Path | None = None,
) -> ExportReport:
    """Export the generator of a checkpoint to ONNX behind the parity gate.

    Parameters
    ----------
    checkpoint : pathlib.Path
        ``best.pt`` or ``last.pt`` written by training.
    output : pathlib.Path
        The float32 ONNX file to write.
    settings : ExportSettings, optional
        Name, version, opset and tolerances.
    evaluation : pathlib.Path, optional
        ``evaluation.json`` written by ``evaluate``; its test results go into
        the ``metrics`` metadata.
    parity_images : Sequence[pathlib.Path]
        Real images for the parity check; by default up to two test (else
        validation) images of the checkpoint's run.
    fp16_output : pathlib.Path, optional
        Also write a float16 model here, behind its own parity gate.

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportError
        If a model fails its parity gate (nothing is written for it).
    ValueError
        If the checkpoint or the evaluation file is unreadable.
    """
    settings = settings or ExportSettings()
    generator, meta = load_generator(checkpoint)
    evaluation_data = None
    if evaluation is not None:
        try:
            evaluation_data = json.loads(evaluation.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"The evaluation file {evaluation} cannot be read: {exc}") from exc
    inputs = parity_inputs(_parity_images(meta, parity_images, checkpoint))
    model = to_onnx_model(generator, settings.opset)
    parity = check_parity(generator, model, inputs, settings.tolerance or FP32_TOLERANCE)
    logger.info("fp32 parity: %s", parity.differences)
    if not parity.passed:
        raise ExportError(
            f"The ONNX model differs from PyTorch by {parity.max_difference:.2e}, more than the "
            f"tolerance {parity.tolerance:.0e}; nothing was written."
        )
    export_info = {
        "opset": settings.opset,
        "fp32_parity": parity.as_dict(),
        "exporter": f"torch {torch.__version__} (TorchScript exporter)",
    }
    fp16_model, fp16_parity = None, None
    if fp16_output is not None:
        fp16_model = convert_fp16(model)
        fp16_parity = check_parity(
            generator, fp16_model, inputs, settings.fp16_tolerance or FP16_TOLERANCE, "fp16"
        )
        logger.info("fp16 parity: %s", fp16_parity.differences)
        if not fp16_parity.passed:
            raise ExportError(
                f"The fp16 ONNX model differs from PyTorch by {fp16_parity.max_difference:.2e}, "
                f"more than the tolerance {fp16_parity.tolerance:.0e}; nothing was written."
            )
    props = build_metadata(meta, generator, settings, evaluation_data, export_info)
    set_metadata(model, props)
    _write(model, output)
    report = ExportReport(output, file_sha256(output), parity)
    if fp16_output is not None and fp16_model is not None and fp16_parity is not None:
        fp16_info = {**export_info, "precision": "fp16", "fp16_parity": fp16_parity.as_dict()}
        set_metadata(
            fp16_model,
            {
                **build_metadata(meta, generator, settings, evaluation_data, fp16_info),
                "model_version": f"{settings.version}-fp16"[:64],
            },
        )
        _write(fp16_model, fp16_output)
        report.fp16_output, report.fp16_sha256 = fp16_output, file_sha256(fp16_output)
        report.fp16_parity = fp16_parity
    return report
