"""Typed registries of named components, one per component kind.

An :class:`Entry` is ``name -> (factory, config dataclass, one-line summary, providing distribution)``.
A :class:`Registry` holds the entries of one kind; a :class:`Registrar` is the view a plugin's hook
receives, bound to the plugin's distribution so every entry records who provides it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as importlib_metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cellssl.errors import DuplicateNameError, UnknownNameError

COMPONENT_KINDS: tuple[str, ...] = ("dataset", "channel_strategy", "backbone", "objective", "evaluator", "download",
                                    "model", "launcher")

# Names provided by first-party plugins that are installed separately. An unknown name found here is
# answered with the distribution to install.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "dataset": {
        "bloodcells": "cellssl-bloodcells",
        "hpa_single_cell": "cellssl-hpa",
        "hpa_fov": "cellssl-hpa",
        "chammi_wtc": "cellssl-chammi",
        "chammi_hpa": "cellssl-chammi",
        "chammi_cp": "cellssl-chammi",
        "chammi": "cellssl-chammi",
        "jumpcp": "cellssl-jumpcp",
        "jump_sites": "cellssl-jumpcp",
        "jump_cells": "cellssl-jumpcp",
    },
    "evaluator": {"chammi": "cellssl-chammi", "jump_map": "cellssl-jumpcp"},
    "download": {"chammi": "cellssl-chammi", "hpa": "cellssl-hpa"},
}


def kind_title(kind: str) -> str:
    """The plural heading of component ``kind``: ``"channel_strategy"`` -> ``"channel strategies"``."""
    words = kind.split("_")
    last = words[-1]
    if last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        words[-1] = last[:-1] + "ies"
    elif last.endswith(("s", "x", "ch", "sh")):
        words[-1] = last + "es"
    else:
        words[-1] = last + "s"
    return " ".join(words)


@dataclass(frozen=True)
class FailedPlugin:
    """A plugin that failed to import or to register: what lookups of the names it provides report.

    :ivar name: the plugin's (entry-point) name. :ivar distribution: the distribution that ships it.
    :ivar error: the error, one line.
    """

    name: str
    distribution: str
    error: str

    def provides(self, kind: str, name: str) -> bool:
        """Whether the plugin would provide ``name`` of ``kind``: :data:`KNOWN_PROVIDERS` says its
        distribution does, or ``name`` is the plugin's own name."""
        known = KNOWN_PROVIDERS.get(kind, {}).get(name)
        return known == self.distribution if known is not None else name == self.name


@dataclass(frozen=True)
class CliCommand:
    """A ``cellssl`` subcommand provided by a plugin.

    :ivar name: the subcommand (``chammi-table``); ``group`` nests it (``cellssl data download``).
    :ivar help: one line for ``cellssl --help``.
    :ivar add_arguments: adds the command's arguments to its ``argparse`` subparser.
    :ivar run: executes the command with the parsed arguments and returns the exit status; raises
        :class:`cellssl.errors.CellsslError` for user mistakes.
    """

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]
    group: str | None = None

    @property
    def full_name(self) -> str:
        """``"group name"`` or ``"name"``."""
        return f"{self.group} {self.name}" if self.group else self.name


def _is_installed(distribution: str) -> bool:
    try:
        importlib_metadata.distribution(distribution)
    except importlib_metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """One registered component.

    :ivar kind: component kind, one of :data:`COMPONENT_KINDS`.
    :ivar name: the name a config uses (``data: {name: ...}``).
    :ivar factory: callable building the component from a validated ``config_cls`` instance.
    :ivar config_cls: dataclass describing the parameters of the component's YAML block.
    :ivar summary: one-line description shown by ``cellssl plugins``.
    :ivar distribution: the distribution (package) that registered the entry.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    config_cls: type
    summary: str
    distribution: str


class Registry:
    """Entries of one component kind, keyed by name.

    :param kind: the component kind, one of :data:`COMPONENT_KINDS`.
    :raises ValueError: if ``kind`` is not a known component kind.
    """

    def __init__(self, kind: str) -> None:
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {COMPONENT_KINDS}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.failed: list[FailedPlugin] = []
        """Plugins that failed to load (set by the plugin manager), named when a lookup misses."""

    def add(self, entry: Entry) -> None:
        """Add ``entry``.

        :raises DuplicateNameError: if the name is already registered; the message names both
            distributions.
        """
        existing = self._entries.get(entry.name)
        if existing is not None:
            raise DuplicateNameError(
                f"{self.kind} '{entry.name}' is registered twice: by distribution "
                f"'{existing.distribution}' and by distribution '{entry.distribution}'. "
                "Uninstall one of them or rename the entry in one plugin."
            )
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        """Return the entry called ``name``.

        :raises UnknownNameError: listing the available names, the closest match and, for names of
            first-party plugins that are not installed, the distribution to install.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_name_message(name)) from None

    def unknown_name_message(self, name: str) -> str:
        """The message for an unknown ``name``: available names, closest match, what to install."""
        available = sorted(self._entries)
        parts = [f"unknown {self.kind} '{name}'."]
        provider = KNOWN_PROVIDERS.get(self.kind, {}).get(name)
        failed = next((plugin for plugin in self.failed if plugin.provides(self.kind, name)), None)
        if failed is not None:
            parts.append(
                f"It is provided by plugin '{failed.name}' (distribution '{failed.distribution}'), which failed to "
                f"load: {failed.error}. Fix or reinstall that plugin (`cellssl plugins` shows its state)."
            )
        elif provider is not None:
            if _is_installed(provider):
                parts.append(
                    f"It is provided by the distribution '{provider}', which is installed but not loaded: "
                    "CELLSSL_PLUGINS or CELLSSL_DISABLE_PLUGIN_AUTOLOAD may exclude it, or it failed to load "
                    "(run `cellssl plugins` to see its error)."
                )
            else:
                parts.append(
                    f"It is provided by the distribution '{provider}', which is not installed: "
                    f"run `pip install {provider}` (or `pip install -e plugins/{provider}` from a source "
                    "checkout)."
                )
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        if close and provider is None and failed is None:
            parts.append(f"Did you mean '{close[0]}'?")
        parts.append(f"Available {self.kind} names: {', '.join(available) if available else '(none)'}.")
        others = [plugin for plugin in self.failed if plugin is not failed]
        if others and failed is None:
            parts.append("Plugins that failed to load (one of them may provide it): " + "; ".join(
                f"'{plugin.name}' ({plugin.distribution}): {plugin.error}" for plugin in others) + ".")
        return " ".join(parts)

    def remove(self, name: str) -> None:
        """Remove the entry called ``name`` (used to roll back a plugin whose registration failed)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._entries)


class Registrar:
    """What a plugin's registration hook receives: adds entries on behalf of one distribution.

    :param registry: the registry of the hook's component kind.
    :param distribution: the distribution that provides the plugin calling the hook.
    """

    def __init__(self, registry: Registry, distribution: str) -> None:
        self._registry = registry
        self.distribution = distribution
        self.kind = registry.kind
        self.added: list[str] = []

    def add(self, name: str, factory: Callable[..., Any], config_cls: type, summary: str) -> None:
        """Register ``name``.

        :param name: the name configs use; lowercase letters, digits and ``_``.
        :param factory: builds the component from a ``config_cls`` instance (see the hook's contract).
        :param config_cls: a dataclass whose fields are the YAML block's parameters (all with defaults
            or required by the user).
        :param summary: one line for ``cellssl plugins``.
        :raises TypeError: if ``config_cls`` is not a dataclass or ``factory`` is not callable.
        :raises ValueError: if ``name`` is not a valid identifier.
        :raises DuplicateNameError: if the name is already taken.
        """
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"{self.kind} name {name!r} must be a lowercase identifier")
        if not dataclasses.is_dataclass(config_cls) or not isinstance(config_cls, type):
            raise TypeError(f"{self.kind} '{name}': config_cls must be a dataclass type, got {config_cls!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind} '{name}': factory must be callable")
        entry = Entry(self.kind, name, factory, config_cls, summary.strip().splitlines()[0], self.distribution)
        self._registry.add(entry)
        self.added.append(name)
