"""One policy for bad rows (``on_corrupt``) and image paths that stay inside ``data.root``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.errors import DataError
from cellssl.pipeline import build_dataset, execute

GOOD = 8


def _layout(runs: SimpleNamespace) -> tuple[Path, pd.DataFrame]:
    """``tmp/data``: 8 real Jurkat cells (2 per phase) plus one row of each defect; ``tmp/outside.tif``."""
    root = runs.tmp / "data"
    (root / "cells").mkdir(parents=True)
    meta = pd.read_csv(runs.shared / "jurkat-cellcycle" / "metadata.csv")
    rows = pd.concat([meta[meta["phase"] == p].head(2) for p in ("G1", "S_phase", "G2", "Prophase")])
    paths = []
    for source in rows["path"]:
        target = root / "cells" / Path(source).name
        shutil.copyfile(runs.shared / "jurkat-cellcycle" / source, target)
        paths.append(f"cells/{target.name}")
    good = tifffile.imread(root / paths[0])
    (root / "cells" / "garbage.tif").write_bytes(b"II*\x00 not a tiff at all")
    tifffile.imwrite(root / "cells" / "one_plane.tif", good[:1])
    with_nan = good.astype(np.float32) / 65535
    with_nan[1, 5, 5] = np.nan
    tifffile.imwrite(root / "cells" / "nan.tif", with_nan, photometric="minisblack")
    shutil.copyfile(root / paths[0], runs.tmp / "outside.tif")
    (root / "cells" / "escape.tif").symlink_to(runs.tmp / "outside.tif")
    defects = {"cells/missing.tif": "file not found", "cells/garbage.tif": "could not decode",
               "cells/one_plane.tif": "1 channels",
               "cells/nan.tif": "non-finite", "../outside.tif": "outside data.root",
               "cells/escape.tif": "outside data.root"}
    table = pd.DataFrame({"path": paths + list(defects), "phase": list(rows["phase"]) + ["G1"] * len(defects),
                          "cell_id": range(GOOD + len(defects))})
    table.to_csv(root / "table.csv", index=False)
    return root, pd.DataFrame({"path": list(defects), "reason": list(defects.values())})


def _config(runs: SimpleNamespace, root: Path, **data: object) -> dict:
    block = {"name": "table", "root": str(root), "table": "table.csv", "bit_depth": "dtype",
             "channels": ["brightfield", "dna", "darkfield"], "label_columns": ["phase"], **data}
    return runs.config(data=block, normalize={"mode": "per_image"})


def test_skip_drops_every_kind_of_bad_row_and_reports_it_everywhere(runs: SimpleNamespace) -> None:
    root, defects = _layout(runs)
    assert main(["run", str(runs.write(_config(runs, root, on_corrupt="skip")))]) == 0
    run_dir = runs.tmp / "run"
    skipped = pd.read_csv(run_dir / "skipped.csv")
    assert list(skipped.columns) == ["dataset", "row", "file", "reason"]
    assert sorted(skipped["row"]) == list(range(GOOD + 1, GOOD + 1 + len(defects)))  # 1-based table rows
    for path, reason in zip(defects["path"], defects["reason"]):
        line = skipped[skipped["row"] == GOOD + 1 + list(defects["path"]).index(path)]
        assert reason in line["reason"].iloc[0], (path, line["reason"].iloc[0])
        assert Path(path).name in line["file"].iloc[0]
    manifest = json.loads((run_dir / "embeddings" / "manifest.json").read_text())
    assert manifest["rows"] == GOOD and manifest["skipped_rows"] == len(defects)
    result = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert result["skipped_rows"] == {"count": len(defects), "file": "skipped.csv"}


@pytest.mark.parametrize("defect", ["cells/missing.tif", "cells/garbage.tif", "cells/one_plane.tif", "cells/nan.tif",
                                    "../outside.tif", "cells/escape.tif"])
def test_error_policy_stops_before_any_output_naming_the_row(runs: SimpleNamespace, defect: str) -> None:
    root, _ = _layout(runs)
    table = pd.read_csv(root / "table.csv")
    table[(table.index < GOOD) | (table["path"] == defect)].to_csv(root / "table.csv", index=False)
    config = load_run_config(runs.write(_config(runs, root, check_files="decode")), [])
    with pytest.raises(DataError, match=rf"row {GOOD + 1} of .*table\.csv.*{Path(defect).name}"):
        execute(config)
    assert not (runs.tmp / "run").exists()


def test_paths_outside_the_root_need_an_explicit_opt_in(runs: SimpleNamespace) -> None:
    root, _ = _layout(runs)
    table = pd.read_csv(root / "table.csv")
    table[(table.index < GOOD) | table["path"].isin(["../outside.tif", "cells/escape.tif"])].to_csv(
        root / "table.csv", index=False)
    with pytest.raises(DataError, match=r"2 image path\(s\) resolve outside data\.root .*row 9 of .*table\.csv.*"
                                        r"outside\.tif; row 10 .*escape\.tif.*data\.allow_outside_root: true"):
        build_dataset(load_run_config(runs.write(_config(runs, root)), []))
    allowed = build_dataset(load_run_config(runs.write(_config(runs, root, allow_outside_root=True)), []))
    assert len(allowed) == GOOD + 2
    np.testing.assert_array_equal(allowed[GOOD].image.numpy(), allowed[0].image.numpy())  # outside.tif = cell 0
    # without data.root the table's folder is no fence: paths are the user's own
    config = _config(runs, root)
    config["data"] = {**config["data"], "root": "", "table": str(root / "table.csv")}
    assert len(build_dataset(load_run_config(runs.write(config), []))) == GOOD + 2
