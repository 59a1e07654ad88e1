"""Well names of 96-, 384- and 1536-well plates: parsing and one canonical spelling.

JUMP names wells by row letters and a column number: ``A01`` .. ``P24`` (384 wells; sources 1 and 9
image 1536-well plates, ``A01`` .. ``AF48``). Plate maps sometimes drop the zero (``A1``) or use
lowercase. :func:`canonical_well` spells every form the way ``load_data.csv`` does (``A01``, ``AF48``), so
tables written by different tools join.
"""

from __future__ import annotations

import re

_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,2})\s*$")
MAX_ROWS = 32   # 1536-well plates: rows A..Z, AA..AF
MAX_COLUMNS = 48


def well_position(name: str) -> tuple[int, int]:
    """``(row, column)``, both 1-based, of a well name (``"B03"`` -> ``(2, 3)``, ``"AF48"`` -> ``(32, 48)``).

    :raises ValueError: for a name that is not row letters + column number of a plate up to 1536 wells.
    """
    match = _WELL.match(str(name))
    if not match:
        raise ValueError(f"well name {name!r} is not row letters + column number (e.g. A01, P24, AF48)")
    letters, digits = match.group(1).upper(), int(match.group(2))
    row = ord(letters[-1]) - ord("A") + 1 + (26 * (ord(letters[0]) - ord("A") + 1) if len(letters) == 2 else 0)
    if not 1 <= row <= MAX_ROWS or not 1 <= digits <= MAX_COLUMNS:
        raise ValueError(f"well name {name!r} is outside a 1536-well plate (rows A..AF, columns 1..48)")
    return row, digits


def row_letters(row: int) -> str:
    """Row letters of a 1-based row index (1 -> ``A``, 27 -> ``AA``)."""
    if row <= 26:
        return chr(ord("A") + row - 1)
    return "A" + chr(ord("A") + row - 27)


def canonical_well(name: str) -> str:
    """The ``load_data.csv`` spelling of a well: uppercase row letters and a two-digit column (``a1`` -> ``A01``).

    :raises ValueError: see :func:`well_position`.
    """
    row, column = well_position(name)
    return f"{row_letters(row)}{column:02d}"


def plate_format(wells: list[str]) -> int:
    """The smallest plate (96, 384 or 1536 wells) holding all ``wells``.

    :raises ValueError: for a name :func:`well_position` rejects.
    """
    positions = [well_position(w) for w in wells]
    rows = max((r for r, _ in positions), default=1)
    columns = max((c for _, c in positions), default=1)
    if rows <= 8 and columns <= 12:
        return 96
    if rows <= 16 and columns <= 24:
        return 384
    return 1536
