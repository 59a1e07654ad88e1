"""Conformance tests a component's test suite subclasses: the dataset, channel strategy, backbone and
evaluator contracts of :mod:`cellssl.api`, checked the same way for the core's and every plugin's components.

Each contract is a plain pytest class (not collected itself: its name does not start with ``Test``). A test
module subclasses it under a ``Test...`` name and provides the component, either by implementing the
``make_*`` method or, when it needs other fixtures (``shared_data``, ``tmp_path_factory``), by overriding
the class-scoped fixture of the same name (a ``classmethod``, as pytest wants class-scoped fixtures)::

    from cellssl.testing.conformance import DatasetContract

    class TestMyDataset(DatasetContract):
        expected_channels = ("dna", "protein")

        @pytest.fixture(scope="class")
        @classmethod
        def dataset(cls, shared_data):
            return MyDataset(MyConfig(root=shared_data / "my-data"))

Class attributes tune the checks (``expected_*`` values are asserted when set). Components are built once
per class, so keep them small: a few samples, a tiny backbone, small images.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cellssl.api import (
    Backbone,
    CellDataset,
    CellSample,
    ChannelStrategy,
    DataError,
    EmbeddingTable,
    EvalContext,
    Evaluator,
    canonical_channel_name,
    to_jsonable,
    write_result_json,
)

__all__ = ["BackboneContract", "ChannelStrategyContract", "DatasetContract", "EvaluatorContract", "TinyBackbone"]


def _not_provided(contract: str, what: str) -> NoReturn:
    pytest.fail(f"{contract} needs the component under test: implement `{what}` or override the "
                       f"class-scoped fixture of that name in the subclass", pytrace=False)


def _one_line(text: object, what: str) -> None:
    assert isinstance(text, str) and text.strip(), f"{what} must be a non-empty string, got {text!r}"
    assert "\n" not in text, f"{what} must be one line, got {text!r}"


class TinyBackbone(nn.Module):
    """A deterministic two-layer convolutional backbone for contract tests: ``(N, in_chans, H, W) -> (N, D)``.

    No normalisation layer, so each row of the output depends only on its own input.
    """

    def __init__(self, in_chans: int, embed_dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.conv = nn.Conv2d(in_chans, embed_dim, kernel_size=3, padding=1)
        self.proj = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise DataError(f"TinyBackbone takes (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class DatasetContract:
    """The :class:`~cellssl.api.CellDataset` contract.

    Provide the dataset through :meth:`make_dataset` or the ``dataset`` fixture.

    :cvar expected_num_samples: asserted as ``len(dataset)`` when set.
    :cvar expected_channels: asserted as ``dataset.channel_names`` when set.
    :cvar expected_label_columns: asserted as ``dataset.label_columns`` when set.
    :cvar max_samples_loaded: how many samples (first, middle, last, ...) the sample checks load.
    """

    expected_num_samples: int | None = None
    expected_channels: tuple[str, ...] | None = None
    expected_label_columns: tuple[str, ...] | None = None
    max_samples_loaded: int = 3

    def make_dataset(self) -> CellDataset:
        """The dataset under test (a few samples)."""
        _not_provided(type(self).__name__, "dataset")

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls) -> CellDataset:
        return cls().make_dataset()

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, dataset: CellDataset) -> dict[int, CellSample]:
        n = len(dataset)
        picks = {0, n // 2, n - 1, *range(min(n, cls.max_samples_loaded))}
        return {i: dataset[i] for i in sorted(picks)}

    def test_is_a_cell_dataset(self, dataset: CellDataset) -> None:
        assert isinstance(dataset, CellDataset)

    def test_length_matches_metadata(self, dataset: CellDataset) -> None:
        assert len(dataset) == len(dataset.metadata) > 0
        if self.expected_num_samples is not None:
            assert len(dataset) == self.expected_num_samples

    def test_metadata_index_is_zero_to_n_minus_one(self, dataset: CellDataset) -> None:
        assert list(dataset.metadata.index) == list(range(len(dataset)))

    def test_channel_names_are_canonical_and_unique(self, dataset: CellDataset) -> None:
        names = tuple(dataset.channel_names)
        assert names and all(isinstance(n, str) for n in names)
        assert len(set(names)) == len(names), f"duplicate channel names {names}"
        assert [canonical_channel_name(n) for n in names] == list(names), f"non-canonical channel names {names}"
        assert dataset.num_channels == len(names)
        if self.expected_channels is not None:
            assert names == tuple(self.expected_channels)

    def test_label_columns_exist(self, dataset: CellDataset) -> None:
        columns = tuple(dataset.label_columns)
        missing = [c for c in columns if c not in dataset.metadata.columns]
        assert missing == [], f"label columns {missing} are not metadata columns"
        if self.expected_label_columns is not None:
            assert columns == tuple(self.expected_label_columns)

    def test_samples_are_float32_chw_with_named_channels(self, dataset: CellDataset,
                                                          loaded: dict[int, CellSample]) -> None:
        for index, sample in loaded.items():
            assert isinstance(sample, CellSample)
            assert sample.image.dtype == torch.float32, f"sample {index}: dtype {sample.image.dtype}"
            assert sample.image.ndim == 3 and sample.image.shape[0] == dataset.num_channels
            assert min(sample.image.shape[1:]) >= 1
            assert sample.channels == tuple(dataset.channel_names)
            assert sample.index == index
            assert bool(torch.isfinite(sample.image).all()), f"sample {index} has non-finite values"

    def test_sample_meta_is_its_metadata_row(self, dataset: CellDataset, loaded: dict[int, CellSample]) -> None:
        for index, sample in loaded.items():
            row = dataset.metadata.iloc[index].to_dict()
            assert set(row) <= set(sample.meta)
            differ = [k for k, v in row.items() if not (pd.isna(v) and pd.isna(sample.meta[k])) and sample.meta[k] != v]
            assert differ == [], f"sample {index}: meta differs from its metadata row in {differ}"

    def test_loading_is_deterministic(self, dataset: CellDataset, loaded: dict[int, CellSample]) -> None:
        index = next(iter(loaded))
        assert torch.equal(dataset[index].image, loaded[index].image)

    def test_negative_index_counts_from_the_end(self, dataset: CellDataset, loaded: dict[int, CellSample]) -> None:
        last = len(dataset) - 1
        assert dataset[-1].index == last
        assert torch.equal(dataset[-1].image, loaded[last].image)

    def test_index_out_of_range_raises_index_error(self, dataset: CellDataset) -> None:
        with pytest.raises(IndexError):
            dataset[len(dataset)]
        with pytest.raises(IndexError):
            dataset[-len(dataset) - 1]

    def test_describe_is_one_line(self, dataset: CellDataset) -> None:
        _one_line(dataset.describe(), "describe()")


def _stack(samples: Sequence[CellSample]) -> torch.Tensor:
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) != 1:
        pytest.fail(f"samples have different shapes {sorted(shapes)}; override the `images` fixture", pytrace=False)
    return torch.stack([s.image for s in samples])


class ChannelStrategyContract:
    """The :class:`~cellssl.api.ChannelStrategy` contract, checked with a tiny backbone on real samples.

    Provide the strategy (:meth:`make_strategy` / ``strategy`` fixture) and data it takes
    (:meth:`make_dataset` / ``dataset`` fixture; a few samples of equal size).

    :cvar rejected_channels: channel-name lists the strategy must refuse with a ``DataError``, from
        ``check_channels``, ``block_names`` and ``embed``.
    :cvar training_samples_per_image: asserted as ``len(training_dataset) / len(dataset)`` when set (1 for
        a strategy that trains on whole images, C for one sample per (image, channel)).
    :cvar batch_size: images per embedded batch. :cvar embed_dim: the tiny backbone's ``D``.
    """

    rejected_channels: tuple[tuple[str, ...], ...] = ()
    training_samples_per_image: int | None = None
    batch_size: int = 3
    embed_dim: int = 8

    def make_strategy(self) -> ChannelStrategy:
        _not_provided(type(self).__name__, "strategy")

    def make_dataset(self) -> CellDataset:
        _not_provided(type(self).__name__, "dataset")

    @pytest.fixture(scope="class")
    @classmethod
    def strategy(cls) -> ChannelStrategy:
        return cls().make_strategy()

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls) -> CellDataset:
        return cls().make_dataset()

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls, dataset: CellDataset) -> torch.Tensor:
        return _stack([dataset[i] for i in range(min(cls.batch_size, len(dataset)))])

    @pytest.fixture(scope="class")
    @classmethod
    def backbone(cls, strategy: ChannelStrategy, dataset: CellDataset) -> nn.Module:
        return TinyBackbone(strategy.in_chans(dataset.channel_names), cls.embed_dim).eval()

    def test_is_a_channel_strategy(self, strategy: ChannelStrategy) -> None:
        assert isinstance(strategy, ChannelStrategy)
        _one_line(strategy.describe(), "describe()")

    def test_in_chans_is_a_positive_int(self, strategy: ChannelStrategy, dataset: CellDataset) -> None:
        in_chans = strategy.in_chans(dataset.channel_names)
        assert isinstance(in_chans, int) and in_chans >= 1

    def test_accepts_its_data_and_refuses_other_channels(self, strategy: ChannelStrategy,
                                                          dataset: CellDataset) -> None:
        strategy.check_channels(dataset.channel_names)
        for names in self.rejected_channels:
            with pytest.raises(DataError):
                strategy.check_channels(list(names))
            with pytest.raises(DataError):
                strategy.block_names(list(names))

    def test_embed_shape_matches_block_names(self, strategy: ChannelStrategy, dataset: CellDataset,
                                             backbone: nn.Module, images: torch.Tensor) -> None:
        names = list(dataset.channel_names)
        with torch.no_grad():
            out = strategy.embed(backbone, images, names)
        blocks = strategy.block_names(names)
        assert blocks and all(isinstance(b, str) and b for b in blocks)
        assert len(set(blocks)) == len(blocks), f"duplicate block names {blocks}"
        assert strategy.out_dim(names, self.embed_dim) == len(blocks) * self.embed_dim
        assert tuple(out.shape) == (images.shape[0], len(blocks) * self.embed_dim)
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())

    def test_each_embedding_depends_on_its_own_image_only(self, strategy: ChannelStrategy, dataset: CellDataset,
                                                           backbone: nn.Module, images: torch.Tensor) -> None:
        names = list(dataset.channel_names)
        with torch.no_grad():
            batch = strategy.embed(backbone, images, names)
            alone = torch.cat([strategy.embed(backbone, images[i : i + 1], names) for i in range(len(images))])
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)

    def test_input_order_indexes_the_data_channels(self, strategy: ChannelStrategy, dataset: CellDataset) -> None:
        order = strategy.input_order(dataset.channel_names)
        assert all(isinstance(i, int) and 0 <= i < dataset.num_channels for i in order)
        assert len(set(order)) == len(order)

    def test_training_dataset_yields_in_chans_channels(self, strategy: ChannelStrategy, dataset: CellDataset) -> None:
        training = strategy.training_dataset(dataset)
        in_chans = strategy.in_chans(dataset.channel_names)
        n = len(training)
        assert n >= 1
        if self.training_samples_per_image is not None:
            assert n == self.training_samples_per_image * len(dataset)
        for index in sorted({0, n // 2, n - 1}):
            sample = training[index]
            assert isinstance(sample, CellSample)
            assert sample.image.dtype == torch.float32
            assert sample.image.shape[0] == in_chans == len(sample.channels)


class BackboneContract:
    """The backbone contract (:class:`~cellssl.api.Backbone`): an ``nn.Module`` mapping
    ``(N, in_chans, H, W)`` to ``(N, embed_dim)``, usable under bf16 autocast on CPU.

    Provide it through :meth:`make_backbone` or the ``backbone`` fixture.

    :cvar image_size: side of the test images (a multiple of a ViT's patch size).
    :cvar batch_size: images per test batch.
    :cvar bf16_min_cosine: the smallest cosine similarity allowed between bf16-autocast and fp32 outputs.
    """

    image_size: int = 32
    batch_size: int = 3
    bf16_min_cosine: float = 0.98

    def make_backbone(self) -> nn.Module:
        _not_provided(type(self).__name__, "backbone")

    @pytest.fixture(scope="class")
    @classmethod
    def backbone(cls) -> nn.Module:
        return cls().make_backbone()

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls, backbone: nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(cls.batch_size, backbone.in_chans, cls.image_size, cls.image_size, generator=generator)

    def test_contract_attributes(self, backbone: nn.Module) -> None:
        assert isinstance(backbone, nn.Module)
        assert isinstance(backbone, Backbone)
        assert isinstance(backbone.embed_dim, int) and backbone.embed_dim >= 1
        assert isinstance(backbone.in_chans, int) and backbone.in_chans >= 1

    def test_forward_shape(self, backbone: nn.Module, images: torch.Tensor) -> None:
        backbone.eval()
        with torch.no_grad():
            out = backbone(images)
        assert tuple(out.shape) == (self.batch_size, backbone.embed_dim)
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())

    def test_each_row_depends_on_its_own_image_only(self, backbone: nn.Module, images: torch.Tensor) -> None:
        backbone.eval()
        with torch.no_grad():
            batch = backbone(images)
            alone = torch.cat([backbone(images[i : i + 1]) for i in range(len(images))])
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)

    def test_bf16_autocast_on_cpu_is_close_to_fp32(self, backbone: nn.Module, images: torch.Tensor) -> None:
        backbone.eval()
        with torch.no_grad():
            reference = backbone(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = backbone(images)
        assert tuple(low.shape) == tuple(reference.shape)
        assert bool(torch.isfinite(low.float()).all())
        cosine = torch.nn.functional.cosine_similarity(low.float(), reference, dim=1)
        assert float(cosine.min()) >= self.bf16_min_cosine, f"bf16 vs fp32 cosine {cosine.tolist()}"

    def test_gradients_reach_the_parameters(self, backbone: nn.Module, images: torch.Tensor) -> None:
        backbone.train()
        backbone.zero_grad()
        backbone(images).square().mean().backward()
        grads = [p.grad for p in backbone.parameters() if p.requires_grad]
        assert grads and any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        backbone.zero_grad()
        backbone.eval()

    def test_state_dict_round_trips_with_weights_only(self, backbone: nn.Module, images: torch.Tensor) -> None:
        backbone.eval()
        with torch.no_grad():
            reference = backbone(images)
        buffer = io.BytesIO()
        torch.save(backbone.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        assert state.keys() == backbone.state_dict().keys()
        with torch.no_grad():
            for parameter in backbone.parameters():
                parameter.add_(1.0)
            backbone.load_state_dict(state)
            torch.testing.assert_close(backbone(images), reference)

    def test_wrong_channel_count_is_refused(self, backbone: nn.Module) -> None:
        wrong = torch.rand(1, backbone.in_chans + 1, self.image_size, self.image_size)
        with pytest.raises((DataError, RuntimeError, ValueError)):
            backbone(wrong)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Number | np.number):
        return False
    return math.isfinite(float(value))


class EvaluatorContract:
    """The :class:`~cellssl.api.Evaluator` contract: a dict with flat numeric ``metrics``, strict JSON.

    Provide the evaluator (:meth:`make_evaluator` / ``evaluator`` fixture) and an embedding table it can
    score (:meth:`make_table` / ``table`` fixture); override :meth:`make_context` when it needs a model or
    label columns.

    :cvar expected_metrics: metric names that must be present.
    :cvar requires_config: the result carries the ``config`` used.
    """

    expected_metrics: tuple[str, ...] = ()
    requires_config: bool = True

    def make_evaluator(self) -> Evaluator:
        _not_provided(type(self).__name__, "evaluator")

    def make_table(self) -> EmbeddingTable:
        _not_provided(type(self).__name__, "table")

    def make_context(self, run_dir: Path) -> EvalContext:
        """The context the evaluator gets (default: only ``run_dir``)."""
        return EvalContext(run_dir=run_dir)

    @pytest.fixture(scope="class")
    @classmethod
    def evaluator(cls) -> Evaluator:
        return cls().make_evaluator()

    @pytest.fixture(scope="class")
    @classmethod
    def table(cls) -> EmbeddingTable:
        return cls().make_table()

    @pytest.fixture(scope="class")
    @classmethod
    def run_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("conformance-run")

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, evaluator: Evaluator, table: EmbeddingTable, run_dir: Path) -> dict[str, Any]:
        return evaluator.evaluate(table, cls().make_context(run_dir))

    def test_is_an_evaluator_with_a_name(self, evaluator: Evaluator) -> None:
        assert isinstance(evaluator, Evaluator)
        assert isinstance(evaluator.name, str) and evaluator.name.isidentifier()

    def test_returns_flat_numeric_metrics(self, result: dict[str, Any]) -> None:
        assert isinstance(result, dict)
        metrics = result.get("metrics")
        assert isinstance(metrics, dict) and metrics, "the result needs a non-empty `metrics` dict"
        not_numbers = {k: v for k, v in metrics.items() if not (isinstance(k, str) and _is_number(v))}
        assert not_numbers == {}, f"metrics must map names to finite numbers: {not_numbers}"
        missing = [m for m in self.expected_metrics if m not in metrics]
        assert missing == []
        if self.requires_config:
            assert "config" in result

    def test_result_is_strict_json(self, result: dict[str, Any], evaluator: Evaluator, run_dir: Path) -> None:
        payload = to_jsonable(result)
        text = json.dumps(payload, allow_nan=False)
        path = write_result_json(result, run_dir, evaluator.name)
        assert path == run_dir / "eval" / f"{evaluator.name}.json"
        assert json.loads(path.read_text()) == json.loads(text)

    def test_scoring_is_deterministic(self, result: dict[str, Any], evaluator: Evaluator, table: EmbeddingTable,
                                      run_dir: Path) -> None:
        again = evaluator.evaluate(table, self.make_context(run_dir))
        assert to_jsonable(again["metrics"]) == to_jsonable(result["metrics"])

    def test_does_not_modify_the_table(self, evaluator: Evaluator, table: EmbeddingTable, run_dir: Path) -> None:
        embeddings, metadata = table.embeddings.copy(), table.metadata.copy()
        evaluator.evaluate(table, self.make_context(run_dir))
        np.testing.assert_array_equal(table.embeddings, embeddings)
        assert table.metadata.equals(metadata)
