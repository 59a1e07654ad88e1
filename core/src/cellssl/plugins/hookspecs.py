"""Hook specifications of the ``cellssl`` pluggy project.

A plugin is a module (or object) named by an entry point of group ``cellssl`` in its distribution's
metadata, for example in ``pyproject.toml``::

    [project.entry-points.cellssl]
    mydata = "my_package.cellssl_plugin"

The module implements any of the hooks below with :data:`hookimpl`. Each hook receives a
:class:`~cellssl.plugins.registry.Registrar` bound to one component kind and calls
``registrar.add(name, factory, config_cls, summary)`` once per component. Hooks must not import torch or
other heavy libraries at module level: factories import what they need when they are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cellssl.plugins.registry import CliCommand, Registrar

PROJECT_NAME = "cellssl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cellssl_register_datasets(registry: Registrar) -> None:
    """Register datasets.

    :param registry: registrar for kind ``"dataset"``. Each ``registry.add(name, factory, config_cls,
        summary)`` registers one dataset. ``factory(config)`` receives an instance of ``config_cls`` (a
        dataclass validated from the YAML block ``data:``) and returns a
        :class:`cellssl.data.dataset.CellDataset`: a map-style dataset of
        :class:`cellssl.data.sample.CellSample` with a ``metadata`` DataFrame (one row per sample, in
        order) and ``channel_names``.
    :return: nothing; the registrations are the effect.
    """


@hookspec
def cellssl_register_channel_strategies(registry: Registrar) -> None:
    """Register channel strategies.

    :param registry: registrar for kind ``"channel_strategy"``. ``factory(config)`` returns a
        :class:`cellssl.channels.base.ChannelStrategy`, which decides the backbone's ``in_chans``, the
        samples the SSL objective trains on, and how a C-channel image batch becomes one embedding per
        image.
    :return: nothing.
    """


@hookspec
def cellssl_register_backbones(registry: Registrar) -> None:
    """Register backbones.

    :param registry: registrar for kind ``"backbone"``. ``factory(config, in_chans)`` returns a
        ``torch.nn.Module`` whose ``forward(x: (B, in_chans, H, W))`` returns a ``(B, embed_dim)`` embedding
        and which exposes an ``embed_dim`` attribute. ``in_chans`` comes from the channel strategy.
    :return: nothing.
    """


@hookspec
def cellssl_register_objectives(registry: Registrar) -> None:
    """Register self-supervised objectives.

    :param registry: registrar for kind ``"objective"``. ``factory(config, backbone_factory)`` receives
        an instance of ``config_cls`` (validated from the YAML block ``objective:``) and a callable
        ``backbone_factory()`` that returns a freshly initialised backbone (``nn.Module`` mapping
        ``(B, in_chans, H, W)`` to ``(B, embed_dim)``, with ``embed_dim``; ``in_chans`` comes from the
        channel strategy). It returns a :class:`cellssl.objectives.base.Objective`: an ``nn.Module`` with
        ``student`` and ``teacher`` submodules (same structure; the teacher is updated by EMA over
        ``momentum_pairs()``), ``make_views(normalizer)`` and ``make_collate()`` (picklable callables:
        ``views(sample, generator) -> item dict``, ``collate(items) -> batch``), ``forward(batch, *,
        teacher_temp) -> ObjectiveOutput`` (loss, logged terms, teacher outputs for the collapse monitor)
        and ``teacher_backbone()`` (the module exported for ``cellssl embed``). A factory raises
        :class:`cellssl.errors.ConfigError` when the backbone does not fit (e.g. iBOT without patch tokens).
    :return: nothing.
    """


@hookspec
def cellssl_register_evaluators(registry: Registrar) -> None:
    """Register evaluators.

    :param registry: registrar for kind ``"evaluator"``. ``factory(config)`` returns a
        :class:`cellssl.eval.base.Evaluator`, whose ``evaluate(table, context)`` scores an embedding table
        and returns a JSON-serialisable result dictionary.
    :return: nothing.
    """


@hookspec
def cellssl_register_downloads(registry: Registrar) -> None:
    """Register downloadable public datasets for ``cellssl data download NAME --to DIR``.

    :param registry: registrar for kind ``"download"``. ``factory(config)`` returns a
        :class:`cellssl.data.download.DownloadSpec` (files with URLs, sizes and checksums, and what to do
        after fetching them).
    :return: nothing.
    """


@hookspec
def cellssl_register_models(registry: Registrar) -> None:
    """Register model cards: released models by name, for ``model: NAME`` and ``cellssl models``.

    :param registry: registrar for kind ``"model"``. Register each card with
        ``cellssl.zoo.card.add_card(registry, card)``; the entry's ``factory(config)`` returns the
        :class:`cellssl.zoo.card.ModelCard` (backbone block, channel strategy and channel names,
        normalisation, embedding input size and features, licence, source, file name, sha256, citation).
    :return: nothing.
    """


@hookspec
def cellssl_register_launchers(registry: Registrar) -> None:
    """Register launchers: where a run executes (``launcher: {name: ...}`` in a run config).

    :param registry: registrar for kind ``"launcher"``. ``factory(config)`` returns a
        :class:`cellssl.launch.launcher.Launcher`, whose ``launch(plan, stages, restart=...)`` executes the
        validated :class:`cellssl.plan.model.RunPlan` (in this process, or by submitting a job that runs it)
        and returns a :class:`cellssl.launch.launcher.LaunchResult`. The core registers ``local`` and ``slurm``.
    :return: nothing.
    """


@hookspec
def cellssl_cli_commands() -> list[CliCommand]:
    """Add subcommands to the ``cellssl`` command line.

    :return: the :class:`cellssl.plugins.registry.CliCommand` objects this plugin provides; each gets a
        subparser named ``command.name`` (a name already taken is reported as a plugin error).
    """
