"""The shared vocabulary of channel names.

Datasets name their channels with these canonical names where one applies, so that models trained on
one dataset can be evaluated on another by name. Free names (any lowercase identifier) are allowed for
stains outside the vocabulary. :func:`canonical_channel_name` maps common synonyms (``DAPI``,
``Hoechst``, ``nucleus``) to the canonical name.
"""

from __future__ import annotations

import re

CANONICAL_CHANNELS: tuple[str, ...] = (
    "dna",
    "rna",
    "er",
    "agp",
    "mito",
    "golgi",
    "protein",
    "microtubules",
    "actin",
    "membrane",
    "brightfield",
    "darkfield",
    "red",
    "green",
    "blue",
)

SYNONYMS: dict[str, str] = {
    "dapi": "dna",
    "hoechst": "dna",
    "nucleus": "dna",
    "nuclei": "dna",
    "dna": "dna",
    "syto14": "rna",
    "rna": "rna",
    "cona": "er",
    "er": "er",
    "endoplasmic_reticulum": "er",
    "agp": "agp",
    "mito": "mito",
    "mitochondria": "mito",
    "mitotracker": "mito",
    "golgi": "golgi",
    "protein": "protein",
    "tubulin": "microtubules",
    "microtubules": "microtubules",
    "actin": "actin",
    "phalloidin": "actin",
    "membrane": "membrane",
    "brightfield": "brightfield",
    "bf": "brightfield",
    "darkfield": "darkfield",
    "df": "darkfield",
    "r": "red",
    "g": "green",
    "b": "blue",
    "red": "red",
    "green": "green",
    "blue": "blue",
}

_FREE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def canonical_channel_name(name: str) -> str:
    """Map ``name`` to its canonical vocabulary name, or return it normalised as a free name.

    Matching ignores case, spaces and hyphens. ``"DAPI"`` -> ``"dna"``, ``"Tubulin"`` ->
    ``"microtubules"``, ``"pH3"`` -> ``"ph3"`` (a free name).

    :raises ValueError: if the normalised name is not a lowercase identifier.
    """
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if key in SYNONYMS:
        return SYNONYMS[key]
    if not _FREE_NAME.match(key):
        raise ValueError(
            f"channel name {name!r} is not usable: names are letters, digits and underscores, starting with a "
            f"letter (canonical names: {', '.join(CANONICAL_CHANNELS)})"
        )
    return key
