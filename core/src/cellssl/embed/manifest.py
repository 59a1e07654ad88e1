"""Verification of an embedding folder's manifests: a set is read only when it is complete and unchanged.

:func:`verify_manifests` is what :func:`~cellssl.embed.store.read_embeddings` runs on a folder. It
refuses (with :class:`~cellssl.errors.DataError`, saying how to finish or redo the set):

- shards without a manifest (an export that was killed or failed: re-running it resumes);
- a manifest of an older format (no shard digests);
- a distributed export missing the manifest of some rank, or mixing exports of different process counts;
- a listed shard that is missing, has another row count or another SHA-256 (changed after writing);
- a shard that no manifest lists (left by another export);
- manifests whose fingerprints differ, or differ from the fingerprint the caller expects (the run's config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellssl.errors import DataError

RESUME_HINT = ("re-run the embed stage with the same config (`cellssl embed <config>`): it keeps the complete "
               "shards and embeds the rest")


def _diff(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff(a, b, name)
        elif a != b:
            keys.append(name)
    return keys


def verify_manifests(
    folder: Path,
    shards: list[Path],
    *,
    expected_fingerprint: str | None = None,
    expected_parts: dict[str, Any] | None = None,
    check_digests: bool = True,
) -> dict[str, Any]:
    """Check the manifests of ``folder`` against its ``shards`` and return them merged.

    :param expected_fingerprint: the fingerprint the set must have (``None``: any).
    :param expected_parts: what that fingerprint was computed from; names the differing keys in the message.
    :param check_digests: recompute every shard's SHA-256 (reads each file once).
    :return: ``{"rows", "dim", "columns", "shards", "fingerprint", "skipped_rows", "info", "manifests", ...}``.
    :raises DataError: see the module docstring.
    """
    from cellssl.embed.store import FORMAT_VERSION, MANIFEST_SUFFIX, footer_digest

    manifests = sorted(folder.glob(f"*{MANIFEST_SUFFIX}"))
    if not manifests:
        raise DataError(
            f"{folder} holds {len(shards)} embedding shard(s) but no manifest: the export did not finish (it was "
            f"killed or failed), so the set may be partial and is not read. To finish it, {RESUME_HINT}."
        )
    merged: dict[str, Any] = {"rows": 0, "shards": [], "info": {}, "manifests": [], "skipped_rows": 0}
    worlds: set[int] = set()
    ranks: set[int] = set()
    fingerprints: set[str] = set()
    for path in manifests:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read embedding manifest {path}: {exc}; {RESUME_HINT}") from exc
        if int(data.get("format_version", 1)) < FORMAT_VERSION or not data.get("complete"):
            raise DataError(f"embedding manifest {path} was written by an older cellssl (no shard digests); "
                            "re-embed (`cellssl embed <config>`) to read it")
        merged["manifests"].append(path.name)
        merged["rows"] += int(data.get("rows", 0))
        merged["skipped_rows"] += int(data.get("skipped_rows", 0))
        merged["shards"].extend(data.get("shards", []))
        worlds.add(int(data.get("world_size", 1)))
        ranks.add(int(data.get("rank", 0)))
        fingerprints.add(str(data.get("fingerprint", "")))
        for key in ("format_version", "dim", "columns", "embedding_column", "fingerprint", "total_rows"):
            if merged.get(key) is None:
                merged[key] = data.get(key)
        merged["info"] = {**data.get("info", {}), **merged["info"]}
    if len(worlds) > 1:
        raise DataError(f"{folder} mixes embedding exports made with different numbers of processes "
                        f"({sorted(worlds)}); re-embed into a clean folder")
    world = worlds.pop()
    missing_ranks = sorted(set(range(world)) - ranks)
    if missing_ranks:
        raise DataError(f"{folder}: the manifests of rank(s) {missing_ranks} of {world} are missing, so the set is "
                        f"partial; {RESUME_HINT}")
    if len(fingerprints) > 1:
        raise DataError(f"{folder} mixes embedding sets with different fingerprints; re-embed into a clean folder")
    present = {p.name: p for p in shards}
    listed = {s["file"] for s in merged["shards"]}
    missing = sorted(listed - set(present))
    if missing:
        raise DataError(f"{folder}: shard(s) {missing[:5]} listed in the manifest are missing; the set is incomplete. "
                        "Re-embed (`cellssl embed <config>`).")
    extra = sorted(set(present) - listed)
    if extra:
        raise DataError(f"{folder}: shard(s) {extra[:5]} are listed in no manifest (left by another export?); remove "
                        "them or re-embed into a clean folder")
    if check_digests:
        for shard in merged["shards"]:
            if footer_digest(present[shard["file"]]) != shard.get("sha256"):
                raise DataError(f"embedding shard {present[shard['file']]} changed after it was written (its SHA-256 "
                                "differs from the manifest's); re-embed (`cellssl embed <config>`)")
    if expected_fingerprint is not None and merged.get("fingerprint") != expected_fingerprint:
        found = merged["info"].get("fingerprint_parts")
        keys = _diff(expected_parts, found) if isinstance(found, dict) and expected_parts else []
        which = f" (differences in: {', '.join(keys[:10])})" if keys else ""
        raise DataError(
            f"the embeddings in {folder} were computed from another data / channels / backbone / weights / "
            f"normalisation / feature recipe than this run's config{which}; re-embed (`cellssl embed <config>`) "
            "before evaluating"
        )
    return merged
