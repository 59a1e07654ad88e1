"""Acceptance: a bag-of-channels model TRAINED on 3 channels (CHAMMI WTC) embeds and evaluates the 4- and
5-channel subsets (HPA, CP) without any code change.

``configs/train/chammi_wtc_bag_of_channels.yaml`` (shrunk to a tiny ViT) trains DINO on the WTC Train split of
the fixture, then ``configs/eval/chammi_knn.yaml weights=<its teacher>`` runs the benchmark. The test checks the
training saw exactly the (image, channel) pairs of the 3-channel Train rows, that the trained weights (not a
fresh initialisation) made the embeddings, by re-embedding CP and HPA rows by hand from the image files,
and that the nine-column table is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cellssl.cli import main
from cellssl.embed.store import read_embeddings
from cellssl.models.checkpoint import load_backbone_weights
from cellssl.models.vit import ViTConfig, build_vit

REPO = Path(__file__).resolve().parents[3]
TRAIN_CONFIG = REPO / "configs" / "train" / "chammi_wtc_bag_of_channels.yaml"
EVAL_CONFIG = REPO / "configs" / "eval" / "chammi_knn.yaml"
DIM, SIZE, BATCH, EPOCHS = 32, 40, 24, 2
BACKBONE = ["backbone.name=vit_tiny", f"backbone.embed_dim={DIM}", "backbone.depth=2", "backbone.num_heads=2",
            "backbone.patch_size=8", f"backbone.img_size={SIZE}", "backbone.layerscale_init=null",
            f"embed.img_size={SIZE}", "embed.precision=fp32", "run.num_threads=1"]
TRAIN = [f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}", "train.checkpoint_every_steps=1000",
         "objective.multicrop.global_size=32", "objective.multicrop.local_size=16", "objective.multicrop.n_local=2",
         "objective.head.out_dim=32", "objective.head.hidden_dim=64", "objective.head.bottleneck_dim=32",
         "run.stages=[train]"]
COLUMNS = ["WTC T1", "WTC T2", "HPA T1", "HPA T2", "HPA T3", "CP T1", "CP T2", "CP T3", "CP T4"]


def _tiny_vit() -> torch.nn.Module:
    return build_vit(ViTConfig(arch="vit_tiny", embed_dim=DIM, depth=2, num_heads=2, patch_size=8, img_size=SIZE,
                               layerscale_init=None), 1)


@pytest.fixture(scope="module")
def trained(chammi, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "chammi_wtc_boc"
    assert main(["run", str(TRAIN_CONFIG), f"data.root={chammi.root}", f"run.output_dir={out}", *BACKBONE,
                 *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def evaluated(trained: Path, chammi, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "chammi_knn_trained"
    assert main(["run", str(EVAL_CONFIG), f"data.root={chammi.root}", f"weights={trained / 'teacher_backbone.pt'}",
                 f"run.output_dir={out}", *BACKBONE]) == 0
    return out


def test_training_saw_the_image_channel_pairs_of_the_3_channel_train_rows(trained: Path, chammi) -> None:
    wtc = chammi.frames["wtc"]
    pairs = int((wtc["train_test_split"] == "Train").sum()) * 3  # 40 Train rows x 3 channels = 120 samples
    steps = [json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, EPOCHS * (pairs // BATCH) + 1))
    state = torch.load(trained / "teacher_backbone.pt", map_location="cpu", weights_only=True)
    assert tuple(state["patch_embed.proj.weight"].shape) == (DIM, 1, 8, 8)  # one input channel


def test_training_updated_the_weights(trained: Path) -> None:
    """The teacher starts as a copy of the student and follows it by EMA: after training they differ, the
    teacher has left its initial weights (the tensors the ViT initialises to constants: LayerNorm weights 1,
    LayerNorm and Linear biases 0) but by less than the student (it lags behind with momentum 0.98), and
    ``teacher_backbone.pt`` is the teacher of the final checkpoint (which also loads as ``weights``)."""
    objective = torch.load(trained / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)["objective"]
    exported = torch.load(trained / "teacher_backbone.pt", map_location="cpu", weights_only=True)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"):
        assert torch.equal(objective[f"teacher.backbone.{key}"], exported[key])
        assert not torch.allclose(objective[f"teacher.backbone.{key}"], objective[f"student.backbone.{key}"],
                                  atol=1e-6), key
    known = {key: 1.0 if key.endswith("norm.weight") or key.endswith(("norm1.weight", "norm2.weight")) else 0.0
             for key in exported if key.startswith(("blocks.", "norm.")) and ("norm" in key or key.endswith(".bias"))}
    assert len(known) == 2 + 2 * 8  # final norm + per block: 2 norms (4), the qkv, proj, fc1 and fc2 biases
    for key, init in known.items():
        teacher_moved = float((exported[key] - init).abs().sum())
        student_moved = float((objective[f"student.backbone.{key}"] - init).abs().sum())
        assert 1e-3 < teacher_moved < student_moved, (key, teacher_moved, student_moved)
    from_checkpoint = _tiny_vit()
    load_backbone_weights(from_checkpoint, trained / "checkpoints" / "final.pt")  # teacher.backbone.* chosen
    assert all(torch.equal(v, exported[k]) for k, v in from_checkpoint.state_dict().items())


def test_trained_model_embeds_4_and_5_channel_subsets_and_scores_all_nine_tasks(evaluated: Path) -> None:
    result = json.loads((evaluated / "eval" / "chammi.json").read_text())
    subsets = result["subsets"]
    assert {k: (v["rows"], v["embedding_dim"]) for k, v in subsets.items()} == {
        "wtc": (64, 3 * DIM), "hpa": (54, 4 * DIM), "cp": (80, 5 * DIM)}
    (row,) = result["table"]
    assert all(isinstance(row[c], float) and 0.0 <= row[c] <= 1.0 for c in COLUMNS)
    assert row["tasks_in_mean"] == 9 and row["mean"] == pytest.approx(np.mean([row[c] for c in COLUMNS]))


@pytest.mark.parametrize(("subset", "folder", "channels"), [("hpa", "HPA", 4), ("cp", "CP", 5)])
def test_embeddings_are_the_trained_model_applied_to_each_channel(evaluated: Path, trained: Path, chammi,
                                                                  subset: str, folder: str, channels: int) -> None:
    """Re-embed three rows by hand: tape -> C planes -> per-plane standardisation -> trained ViT -> concat."""
    model = _tiny_vit().eval()
    load_backbone_weights(model, trained / "teacher_backbone.pt")
    table = read_embeddings(evaluated / "chammi_embeddings" / subset)
    position = {ident: i for i, ident in enumerate(table.metadata["ID"])}
    meta = pd.read_csv(chammi.root / folder / "enriched_meta.csv")
    for _, record in meta.iloc[[0, len(meta) // 2, len(meta) - 1]].iterrows():
        tape = np.asarray(Image.open(chammi.root / record["file_path"]), dtype=np.float64)
        assert tape.shape == (SIZE, SIZE * channels)
        planes = tape.reshape(SIZE, channels, SIZE).transpose(1, 0, 2)
        np.testing.assert_array_equal(planes, chammi.planes(subset, record))  # tape order = channel order
        x = (planes - planes.mean(axis=(1, 2), keepdims=True)) / (planes.std(axis=(1, 2), keepdims=True) + 1e-7)
        with torch.no_grad():
            cls = model(torch.from_numpy(x).float()[:, None])  # (C, DIM): one forward per channel
        expected = cls.reshape(-1).numpy()
        np.testing.assert_allclose(table.embeddings[position[record["ID"]]], expected, atol=2e-4, rtol=1e-4)
