"""The generator: one onnxruntime session per process.

:func:`get_enhancer` creates the :class:`Enhancer` once per distinct
:class:`~dicom_node.config.ModelSettings` value (validating the model's
metadata and warming it up) and returns the same object afterwards.
The CUDA execution provider is used when onnxruntime-gpu finds a GPU (or when
``[model] provider = "cuda"``), the CPU provider otherwise. On CUDA, cuDNN's
convolution algorithm search is set to HEURISTIC so a new image size does not
trigger a slow exhaustive re-tuning, and inputs and outputs stay on the
device through IOBinding.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node import __version__
from dicom_node.config import ModelSettings
from dicom_node.errors import ModelError
from dicom_node.logs import log_event
from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata, file_sha256
from dicom_node.tiling import crop, pad_to_multiple, run_tiled
from dicom_node.timings import StageTimings

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "cxr_pix2pix.onnx"


def bundled_model_path() -> Path:
    """Path of the default model shipped inside the package."""
    return Path(str(resources.files("dicom_node") / "bundled_model" / BUNDLED_MODEL))


class Enhancer:
    """An onnxruntime session running the generator on whole images or tiles.

    Parameters
    ----------
    settings : ModelSettings
        Model path (default: the bundled model), provider, device id, tiling.

    Raises
    ------
    ModelError
        If the file is missing, cannot be loaded, lacks the node's metadata,
        or CUDA was asked for and is not available.
    """

    def __init__(self, settings: ModelSettings) -> None:
        import onnxruntime as ort

        path = settings.path or bundled_model_path()
        if not path.is_file():
            raise ModelError(f"The model file {path} does not exist.")
        self.settings = settings
        self.path = path
        available = ort.get_available_providers()
        want_cuda = settings.provider == "cuda" or (
            settings.provider == "auto" and "CUDAExecutionProvider" in available
        )
        if settings.provider == "cuda" and "CUDAExecutionProvider" not in available:
            raise ModelError(
                'provider = "cuda" was asked for but onnxruntime has no CUDA execution '
                f"provider (available: {', '.join(available)}); install onnxruntime-gpu."
            )
        providers: list[Any] = ["CPUExecutionProvider"]
        if want_cuda:
            providers.insert(
                0,
                (
                    "CUDAExecutionProvider",
                    {
                        "device_id": settings.device_id,
                        "cudnn_conv_algo_search": "HEURISTIC",
                        "do_copy_in_default_stream": True,
                    },
                ),
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ModelError(f"The model {path} cannot be loaded: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self._on_gpu = self.provider == "CUDAExecutionProvider"
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = ModelMetadata.from_props(props, path, file_sha256(path))
        self._check_signature()
        self._lock = threading.Lock()
        if settings.warmup:
            self.warmup()

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelError(
                f"The model {self.path} must have an input {INPUT_NAME!r} and an output "
                f"{OUTPUT_NAME!r}; it has inputs {sorted(inputs)} and outputs {sorted(outputs)}."
            )
        if len(inputs[INPUT_NAME].shape) != 4:
            raise ModelError(f"The model input {INPUT_NAME!r} must be 4-D (N, 1, H, W).")

    def warmup(self) -> float:
        """Run the model once on a small image so the first job is not slowed down.

        Returns the time it took, in milliseconds.
        """
        size = self.metadata.size_multiple
        start = time.perf_counter()
        self._run(np.zeros((size, size), dtype=np.float32))
        elapsed = (time.perf_counter() - start) * 1000
        log_event(logger, "model.warmup", provider=self.provider, ms=elapsed)
        return elapsed

    def _run(self, image: np.ndarray) -> np.ndarray:
        """Run the model on one (rows, cols) float32 array of a valid size."""
        import onnxruntime as ort

        batch = np.ascontiguousarray(image[np.newaxis, np.newaxis, :, :], dtype=np.float32)
        with self._lock:
            if self._on_gpu:
                binding = self.session.io_binding()
                device = self.settings.device_id
                value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device)
                binding.bind_ortvalue_input(INPUT_NAME, value)
                binding.bind_output(OUTPUT_NAME, "cuda", device)
                self.session.run_with_iobinding(binding)
                result = binding.copy_outputs_to_cpu()[0]
            else:
                result = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        out = np.asarray(result, dtype=np.float32)
        if out.shape != batch.shape:
            raise ModelError(
                f"The model returned shape {out.shape} for an input of shape {batch.shape}."
            )
        return out[0, 0]

    def enhance(
        self, image: np.ndarray, force_tiled: bool = False
    ) -> tuple[np.ndarray, StageTimings]:
        """Enhance a normalised image (see :mod:`dicom_node.pixels`).

        The image is reflect-padded to the model's size multiple and cropped
        back, so the result has exactly the input's shape. Images whose padded
        area exceeds ``max_whole_pixels`` (or with `force_tiled`) run in
        overlapping tiles.

        Parameters
        ----------
        image : numpy.ndarray
            float32 (rows, cols) in [0, 1].
        force_tiled : bool, optional
            Tile even when the whole image would fit.

        Returns
        -------
        tuple[numpy.ndarray, StageTimings]
            The enhanced image, float32 in [0, 1], same shape, and the
            ``infer`` stage (padding, model runs, tile blending, cropping)
            with the number of ``tiles`` run.
        """
        if image.ndim != 2:
            raise ValueError(f"Expected a 2-D image, got shape {image.shape}.")
        settings = self.settings
        multiple = self.metadata.size_multiple
        start = time.perf_counter()
        padded, pad = pad_to_multiple(np.asarray(image, dtype=np.float32), multiple)
        tiled = force_tiled or padded.size > settings.max_whole_pixels
        if tiled:
            tile = max(multiple, settings.tile_size - settings.tile_size % multiple)
            padded, pad2 = pad_to_multiple(padded, multiple, minimum=tile)
            tiles_used = 0

            def counted(tile_image: np.ndarray) -> np.ndarray:
                nonlocal tiles_used
                tiles_used += 1
                return self._run(tile_image)

            result = run_tiled(padded, counted, tile, settings.tile_overlap)
            result = crop(result, pad2)
        else:
            tiles_used = 1
            result = self._run(padded)
        result = np.clip(crop(result, pad), 0.0, 1.0)
        infer_ms = (time.perf_counter() - start) * 1000
        return result, StageTimings(infer_ms=infer_ms, tiles=tiles_used)

    def describe(self) -> dict[str, Any]:
        """Model metadata, file hash and execution provider, for display and logs."""
        info: dict[str, Any] = {"provider": self.provider}
        if self._on_gpu:
            info["device_id"] = self.settings.device_id
        info.update(self.metadata.as_dict())
        info["node_version"] = __version__
        return info


_ENHANCERS: dict[tuple[str, ModelSettings], Enhancer] = {}
_ENHANCERS_LOCK = threading.Lock()


def get_enhancer(settings: ModelSettings) -> Enhancer:
    """Return this process's :class:`Enhancer` for `settings`, creating it once.

    The cache key is the resolved model path and the whole `settings` value
    (a frozen, hashable object): tiling, warm-up, provider and device all
    change the session or its results, so settings that differ in any field
    get their own session, and equal settings share one.

    Raises
    ------
    ModelError
        As :class:`Enhancer`.
    """
    path = settings.path or bundled_model_path()
    key = (str(Path(path).resolve()), settings)
    with _ENHANCERS_LOCK:
        enhancer = _ENHANCERS.get(key)
        if enhancer is None:
            enhancer = Enhancer(settings)
            _ENHANCERS[key] = enhancer
            log_event(
                logger,
                "model.session_created",
                provider=enhancer.provider,
                model=enhancer.metadata.name,
                version=enhancer.metadata.version,
                sha256=enhancer.metadata.short_hash,
            )
        return enhancer
