"""Nucleus centres of a site, by a classical segmentation of the DNA channel (scikit-image).

Steps (:func:`find_nuclei`): Gaussian smoothing (``sigma``), Otsu threshold, holes filled, objects
smaller than ``min_area`` removed, touching nuclei split by a watershed of the distance transform
seeded at its local maxima at least ``min_distance`` apart, then regions smaller than ``min_area``
dropped again. Centres are region centroids ``(y, x)`` in pixels, sorted row-major (by y, then x).
"""

from __future__ import annotations

import numpy as np


def find_nuclei(dna: np.ndarray, min_area: int = 50, sigma: float = 1.0, min_distance: int = 7) -> np.ndarray:
    """Centres ``(N, 2)`` float64 ``(y, x)`` of the nuclei in a 2-D DNA image (``(0, 2)`` when there are none).

    :param dna: the DNA channel, any float or integer dtype.
    :raises ValueError: if ``dna`` is not 2-D.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import regionprops
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    if dna.ndim != 2:
        raise ValueError(f"find_nuclei needs a 2-D image, got shape {dna.shape}")
    image = np.asarray(dna, dtype=np.float64)
    if sigma > 0:
        image = gaussian(image, sigma=sigma, preserve_range=True)
    if not np.isfinite(image).all() or image.max() <= image.min():
        return np.zeros((0, 2))
    mask = ndimage.binary_fill_holes(image > threshold_otsu(image))
    mask = remove_small_objects(mask, max_size=min_area - 1) if min_area > 1 else mask
    if not mask.any():
        return np.zeros((0, 2))
    distance = ndimage.distance_transform_edt(mask)
    objects, _ = ndimage.label(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=objects, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    centres = [region.centroid for region in regionprops(labels) if region.area >= min_area]
    if not centres:
        return np.zeros((0, 2))
    out = np.asarray(centres, dtype=np.float64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]
