"""Entry-point module: registers the components. Import-light: the factories import the heavy modules."""

from __future__ import annotations

from cellssl.api import Registrar, hookimpl
from cellssl_example_tiles.configs import ChannelSubsetConfig, FovTilesConfig, NearestCentroidConfig


def _build_tiles(config: FovTilesConfig):
    from cellssl_example_tiles.tiles import FovTiles

    return FovTiles(config)


def _build_subset(config: ChannelSubsetConfig):
    from cellssl_example_tiles.subset import ChannelSubset

    return ChannelSubset(config)


def _build_centroid(config: NearestCentroidConfig):
    from cellssl_example_tiles.centroid import NearestCentroid

    return NearestCentroid(config)


@hookimpl
def cellssl_register_datasets(registry: Registrar) -> None:
    registry.add("fov_tiles", _build_tiles, FovTilesConfig, "square tiles cut from whole fields of view")


@hookimpl
def cellssl_register_channel_strategies(registry: Registrar) -> None:
    registry.add("channel_subset", _build_subset, ChannelSubsetConfig,
                 "a fixed multichannel model over a named subset of the channels")


@hookimpl
def cellssl_register_evaluators(registry: Registrar) -> None:
    registry.add("nearest_centroid", _build_centroid, NearestCentroidConfig,
                 "nearest class centroid (cosine) accuracy on a fraction split")
