"""``use_channels`` in any ``data:`` block selects and orders channels by name, for every dataset."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.embed.store import read_embeddings
from cellssl.errors import ConfigError
from cellssl.pipeline import build_dataset


def test_selection_picks_planes_by_name_alias_and_order(runs: SimpleNamespace) -> None:
    data = runs.config()["data"]
    full = build_dataset(load_run_config(runs.write(runs.config()), []))
    assert full.channel_names == ("brightfield", "dna", "darkfield")
    picked = build_dataset(load_run_config(runs.write(runs.config(data={**data, "use_channels": ["darkfield",
                                                                                                  "Hoechst"]})), []))
    assert picked.channel_names == ("darkfield", "dna")
    raw = tifffile.imread(runs.shared / "jurkat-cellcycle" / full.metadata["path"][3]).astype(np.float32) / 65535
    np.testing.assert_array_equal(picked[3].image.numpy(), raw[[2, 1]])
    assert picked[3].meta == full[3].meta and picked.label_columns == ("phase",)
    with pytest.raises(ConfigError, match=r"config key 'data\.use_channels': names channel 'mito', which the dataset "
                                          r"does not have; its channels are \['brightfield', 'dna', 'darkfield'\]"):
        build_dataset(load_run_config(runs.write(runs.config(data={**data, "use_channels": ["mito"]})), []))
    with pytest.raises(ConfigError, match=r"data\.use_channels.*names a channel twice"):
        build_dataset(load_run_config(runs.write(runs.config(data={**data, "use_channels": ["dna", "dna"]})), []))


def test_bag_of_channels_trained_on_two_channels_embeds_two_three_or_one(runs: SimpleNamespace) -> None:
    data = runs.config()["data"]
    train = runs.config(data={**data, "use_channels": ["brightfield", "darkfield"]}, objective=runs.dino(),
                        train={"max_steps": 2, "batch_size": 16, "log_every": 1}, eval=[],
                        run={"output_dir": str(runs.tmp / "train"), "num_threads": 1})
    train.pop("eval")
    assert main(["run", str(runs.write(train, "train.yaml"))]) == 0
    log = [json.loads(line) for line in (runs.tmp / "train" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2
    weights = runs.tmp / "train" / "teacher_backbone.pt"
    for name, channels, expected in (("two", ["brightfield", "darkfield"], ("brightfield", "darkfield")),
                                     ("three", None, ("brightfield", "dna", "darkfield")),
                                     ("dna", ["dna"], ("dna",))):
        block = {**data, **({"use_channels": channels} if channels else {})}
        config = runs.config(data=block, weights=str(weights), run={"output_dir": str(runs.tmp / name)})
        assert main(["run", str(runs.write(config, f"{name}.yaml"))]) == 0, name
        table = read_embeddings(runs.tmp / name / "embeddings")
        assert table.dim == 32 * len(expected), name  # one 32-dim embedding per channel, concatenated
        assert table.manifest["info"]["channels"] == list(expected)
        result = json.loads((runs.tmp / name / "eval" / "knn.json").read_text())
        assert 0.0 <= result["metrics"]["k1_macro_f1"] <= 1.0 and result["skipped_rows"]["count"] == 0
