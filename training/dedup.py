"""Near-duplicate radiographs: used once, or kept together in one group.

The same radiograph is sometimes present twice, for example as a DICOM file
and as a PNG decoded from it, or at two resolutions. :func:`resolve_duplicates`
finds them by the correlation of 32×32 thumbnails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from dicom_node.pixels import NormalizedImage
from training.records import PairRecord, fixed_splits

logger = logging.getLogger(__name__)

DUPLICATE_CORRELATION = 0.99
"""Thumbnail correlation above which two images are taken to show the same
acquisition. Distinct chest radiographs of this project's data stay below
0.94; the same image at another size or encoding scores above 0.999."""


def _thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    from skimage.transform import resize

    small = resize(image.astype(np.float64), (size, size), anti_aliasing=True).ravel()
    small = small - small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def resolve_duplicates(
    records: Sequence[PairRecord], images: dict[str, NormalizedImage]
) -> list[PairRecord]:
    """Merge the groups of near-duplicate images and drop exact duplicates.

    Two synthetic-pair images whose 32×32 thumbnails correlate above
    :data:`DUPLICATE_CORRELATION` show the same acquisition. When they also
    have the same size (e.g. a DICOM file and a PNG decoded from it) the later
    one is dropped, otherwise (the same radiograph at another resolution) both
    are kept and put in the same group, so they land in the same split.

    Parameters
    ----------
    records : Sequence[PairRecord]
        The records, in a stable order.
    images : dict[str, NormalizedImage]
        The decoded reference image of each record, by ``high`` path.

    Returns
    -------
    list[PairRecord]
        The records without the dropped duplicates, merged groups rewritten.

    Raises
    ------
    training.errors.PairSourceError
        If a merged group would have records fixed to two splits.
    """
    synthetic = [r for r in records if r.low is None]
    if len(synthetic) < 2:
        return list(records)
    thumbs = np.stack([_thumbnail(images[r.high].pixels) for r in synthetic])
    similar = thumbs @ thumbs.T
    parent = list(range(len(synthetic)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dropped: set[int] = set()
    for i in range(len(synthetic)):
        for j in range(i + 1, len(synthetic)):
            if similar[i, j] < DUPLICATE_CORRELATION or j in dropped:
                continue
            if images[synthetic[i].high].shape == images[synthetic[j].high].shape:
                logger.warning(
                    "%s duplicates %s; it is used once.", synthetic[j].name, synthetic[i].name
                )
                dropped.add(j)
            else:
                logger.info(
                    "%s and %s show the same radiograph; they share a split.",
                    synthetic[i].name,
                    synthetic[j].name,
                )
            parent[root(j)] = root(i)
    index = {id(r): k for k, r in enumerate(synthetic)}
    out: list[PairRecord] = []
    for record in records:
        k = index.get(id(record))
        if k is None:
            out.append(record)
        elif k not in dropped:
            out.append(replace(record, group=synthetic[root(k)].group))
    # A merged group keeps one split if any of its members had one fixed.
    fixed_splits(out)
    return out
