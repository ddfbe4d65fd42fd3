"""Classical baselines: non-local means and BM3D, tuned on validation images.

Both denoise with a strength proportional to an estimate of the noise
level: ``h`` (NLM) and ``sigma_psd`` (BM3D) are ``k · σ̂``, where σ̂ is
scikit-image's ``estimate_sigma`` divided by what it reports for unit noise
of the setting's correlation (:func:`sigma_estimate_response`). ``k`` is
tuned for the best PSNR on central crops of validation images
(:func:`tune_factor`); a grid whose edge wins is extended past it.

The jobs can run in spawned worker processes (:class:`BaselineRunner`);
results do not depend on the number of workers.
"""

from __future__ import annotations

import enum
import functools
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from training.crops import centre_crop
from training.data import Example
from training.degrade import correlated_noise
from training.metrics import psnr

logger = logging.getLogger(__name__)

Baseline = Callable[[np.ndarray, float], np.ndarray]
"""A denoiser taking an image and its strength factor ``k``."""

NLM_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)
BM3D_FACTORS = (0.75, 1.0, 1.3)
GRID_STEP = 1.4
"""Factor between successive grid points when a tuning grid is extended past an edge."""
MAX_GRID_EXTENSIONS = 4
TUNE_CROP = 512
"""Side of the central validation crops NLM is tuned on."""
BM3D_TUNE_CROP = 256
"""Side of the central validation crops BM3D is tuned on (it is 25 times slower than NLM)."""


class BM3DProfileValues(enum.StrEnum):
    """BM3D profiles of the ``bm3d`` package that the evaluation offers."""

    NORMAL = "np"
    LOW_COMPLEXITY = "lc"


@functools.cache
def sigma_estimate_response(correlation: float) -> float:
    """What ``estimate_sigma`` reports for unit-variance noise of this correlation.

    scikit-image's estimator looks at the finest wavelet band, where noise
    correlated by a Gaussian PSF has little power: for a 1-px PSF it reports
    about 0.14 of the true standard deviation. Dividing σ̂ by this keeps the
    baselines' ``k`` comparable across settings. 1 for white noise.
    """
    if correlation <= 0.0:
        return 1.0
    from skimage.restoration import estimate_sigma

    noise = correlated_noise((256, 256), correlation, np.random.default_rng(0))
    return float(estimate_sigma(noise))


def nlm(image: np.ndarray, factor: float, sigma_scale: float = 1.0) -> np.ndarray:
    """Non-local means with ``h = factor · σ̂``.

    σ̂ is scikit-image's ``estimate_sigma`` divided by `sigma_scale`
    (:func:`sigma_estimate_response` of the noise correlation). 5×5
    patches, search distance 6, fast mode.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(image)) / sigma_scale
    out = denoise_nl_means(
        image.astype(np.float64),
        h=factor * sigma,
        sigma=sigma,
        patch_size=5,
        patch_distance=6,
        fast_mode=True,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def bm3d_denoise(
    image: np.ndarray,
    factor: float,
    sigma_scale: float = 1.0,
    profile: str = BM3DProfileValues.NORMAL,
) -> np.ndarray:
    """BM3D with ``sigma_psd = factor · σ̂`` (σ̂ as for :func:`nlm`), white-noise model.

    The package's correlated-noise mode (a noise PSD) fails with NumPy 2
    (``bm4d`` calls ``np.trapz``), so correlated noise is treated as white
    with a tuned level.
    """
    import bm3d
    from skimage.restoration import estimate_sigma

    sigma = max(float(estimate_sigma(image)) / sigma_scale, 1e-4)
    chosen: Any = (
        bm3d.BM3DProfileLC()
        if BM3DProfileValues(profile) is BM3DProfileValues.LOW_COMPLEXITY
        else "np"
    )
    out = bm3d.bm3d(image.astype(np.float64), sigma_psd=factor * sigma, profile=chosen)
    return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


class BaselineRunner:
    """Runs jobs in this process (``workers`` = 1) or in a pool of spawned processes.

    Parameters
    ----------
    workers : int
        Number of worker processes; 1 runs every job at once, in this process.
    """

    def __init__(self, workers: int = 1) -> None:
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn")
            )

    @property
    def parallel(self) -> bool:
        """Whether jobs run in worker processes."""
        return self._executor is not None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` (in a worker, or now); `fn` must be picklable with workers."""
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def close(self) -> None:
        """Stop the workers, cancelling the jobs that have not started."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def run_baseline(
    method: Baseline, factor: float, context: np.ndarray, inner: tuple[slice, slice]
) -> tuple[np.ndarray, float]:
    """Denoise `context` and cut out `inner`; also the CPU seconds it took in its process."""
    started = time.process_time()
    out = np.ascontiguousarray(method(context, factor)[inner])
    return out, time.process_time() - started


def _tune_score(method: Baseline, factor: float, low: np.ndarray, ref: np.ndarray) -> float:
    return psnr(ref, method(low, factor))


def tune_factor(
    method: Baseline,
    examples: Sequence[Example],
    factors: Sequence[float],
    max_extensions: int = MAX_GRID_EXTENSIONS,
    crop: int = TUNE_CROP,
    runner: BaselineRunner | None = None,
) -> tuple[float, dict[str, float]]:
    """The factor with the best mean PSNR on the central `crop` crops of `examples`.

    A baseline tuned on a grid whose best point is the grid's edge is not
    tuned: the optimum may lie outside. The grid is therefore extended
    geometrically (by :data:`GRID_STEP`) past an edge that wins, up to
    `max_extensions` times; a factor still at the edge after that is logged
    as a warning.

    Returns
    -------
    tuple[float, dict[str, float]]
        The best factor and the mean PSNR of every factor tried.
    """
    runner = runner or BaselineRunner(1)
    crops = [(centre_crop(e.degraded, crop), centre_crop(e.reference, crop)) for e in examples]

    def score(chosen: Sequence[float]) -> dict[float, float]:
        futures = {
            f: [runner.submit(_tune_score, method, f, low, ref) for low, ref in crops]
            for f in chosen
        }
        return {f: float(np.mean([x.result() for x in fs])) for f, fs in futures.items()}

    scores = score([float(f) for f in factors])
    for _ in range(max_extensions):
        best = max(scores, key=lambda key: scores[key])
        if best == min(scores):
            candidate = round(best / GRID_STEP, 4)
        elif best == max(scores):
            candidate = round(best * GRID_STEP, 4)
        else:
            break
        scores.update(score([candidate]))
    best = max(scores, key=lambda key: scores[key])
    if len(scores) > 1 and best in (min(scores), max(scores)):
        logger.warning("The best factor %g is at the edge of the range searched.", best)
    return best, {f"{factor:g}": scores[factor] for factor in sorted(scores)}
