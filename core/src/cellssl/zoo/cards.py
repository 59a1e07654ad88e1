"""The first-party model cards (plain data; registered by :mod:`cellssl.plugins.builtin`).

Facts are from the public sources named in each card's ``verified``; what could not be checked is listed in
``unverified``. Architecture facts of the Cell-DINO / Channel-Adaptive DINO cards are those of the hub entries
in ``dinov2/hub/cell_dino/backbones.py`` of facebookresearch/dinov2 (arch, patch, stored grid, in_chans,
LayerScale init 1.0, ``block_chunks=4``, no registers, interpolation offset 0.1 without antialias); those of
the DINOv2 cards from ``dinov2/hub/backbones.py`` and ``dinov2/hub/utils.py`` (weights at
``https://dl.fbaipublicfiles.com/dinov2/<name>/<name>_pretrain.pth``, 518 px grid, ``_reg4``: 4 registers,
offset 0 with antialias).
"""

from __future__ import annotations

from cellssl.zoo.card import ModelCard

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_CITATION = ("Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024; "
                   "Darcet et al., Vision Transformers Need Registers, ICLR 2024 (the _reg4 models)")
CELL_DINO_CITATION = ("Moutakanni, Couprie, Yi et al., Cell-DINO: Self-supervised image-based embeddings for cell "
                      "fluorescent microscopy, PLOS Computational Biology 2025 (doi:10.1371/journal.pcbi.1013828)")
CHANNEL_ADAPTIVE_CITATION = ("Channel-Adaptive DINO (Bag of Channels), released with Cell-DINO in "
                             "facebookresearch/dinov2: cite as its README says (not checked here)")
CELL_DINO_SOURCE = ("facebookresearch/dinov2 (hub entries under dinov2/hub/cell_dino); the weights are "
                    "distributed after a request form linked from the Cell-DINO README")
CELL_DINO_LICENSE = "CC-BY-NC 4.0 (FAIR non-commercial research licence of the Cell-DINO code and weights)"
HUB_FILE = "dinov2/hub/cell_dino/backbones.py of facebookresearch/dinov2"
PER_IMAGE = {"mode": "per_image", "eps": 1.0e-7}
CELL_VIT = {"layerscale_init": 1.0, "interpolate_offset": 0.1, "interpolate_antialias": False}


def _cell_dino(name: str, summary: str, arch: str, patch: int, grid_px: int, channels: dict, embed: dict,
               channel_names: tuple[str, ...] = (), unverified: tuple[str, ...] = (),
               citation: str = CELL_DINO_CITATION) -> ModelCard:
    return ModelCard(
        name=name, summary=summary,
        backbone={"name": arch, "patch_size": patch, "img_size": grid_px, **CELL_VIT},
        channels=channels, channel_names=channel_names, normalize=dict(PER_IMAGE), embed=embed,
        license=CELL_DINO_LICENSE, source=CELL_DINO_SOURCE, file_name=f"{name}.pth", citation=citation,
        verified=(f"arch, patch size, stored grid, in_chans, LayerScale init 1.0, block_chunks=4, no registers, "
                  f"interpolation offset 0.1 without antialias: {HUB_FILE}",
                  "weights by request form, non-commercial licence: the Cell-DINO README"),
        unverified=("the released file name (the cache uses <name>.pth; rename the downloaded file)",
                    "sha256 (not published)", *unverified),
    )


def _dinov2(arch: str, short: str, registers: bool) -> ModelCard:
    name = f"dinov2_{short}14" + ("_reg4" if registers else "")
    interp = {"num_register_tokens": 4, "interpolate_offset": 0.0, "interpolate_antialias": True} if registers \
        else {"interpolate_offset": 0.1, "interpolate_antialias": False}
    return ModelCard(
        name=name,
        summary=f"DINOv2 {arch.replace('vit_', 'ViT-').title()}/14{' with 4 registers' if registers else ''}, "
                "ImageNet-scale LVD-142M, RGB: the natural-image baseline",
        backbone={"name": arch, "patch_size": 14, "img_size": 518, "layerscale_init": 1.0, **interp},
        channels={"name": "fixed"}, channel_names=("red", "green", "blue"),
        normalize={"mode": "per_image", "eps": 1.0e-7},
        embed={"img_size": 224, "features": {"n_last_blocks": 1, "avgpool": False}},
        license="Apache-2.0", source=f"{DINOV2_URL}/{name}/{name}_pretrain.pth (torch.hub facebookresearch/dinov2)",
        download_url=f"{DINOV2_URL}/{name}/{name}_pretrain.pth", file_name=f"{name}_pretrain.pth",
        citation=DINOV2_CITATION,
        verified=("URL, arch, patch 14, 518 px stored grid, LayerScale init 1.0"
                  + (", 4 registers, interpolation offset 0 with antialias" if registers else "")
                  + ": dinov2/hub/backbones.py and dinov2/hub/utils.py of facebookresearch/dinov2",
                  "licence Apache-2.0: the licence header of facebookresearch/dinov2"),
        unverified=("sha256 (not published)",),
        notes=("the reference normalises with the ImageNet mean and std; cellssl has no such mode and uses "
               "per-image standardisation (set normalize: to override)",
               "a 3-channel (RGB) stem: for fluorescence data pick three channels with data.use_channels and "
               "channels.channels"),
    )


CARDS: tuple[ModelCard, ...] = (
    _cell_dino("cell_dino_hpa_vitl16", "Cell-DINO ViT-L/16 on HPA single cells, 4 fixed channels",
               "vit_large", 16, 224, {"name": "fixed"}, {"img_size": 224, "features": {"n_last_blocks": 1,
                                                                                        "avgpool": False}},
               channel_names=("microtubules", "protein", "dna", "er"),
               unverified=("channel order microtubules, protein, nucleus, ER (the HPA red, green, blue, yellow "
                           "order of cellssl-hpa)", "embedding input size 224 and CLS-only features")),
    _cell_dino("cell_dino_hpa_vitl14", "Cell-DINO ViT-L/14 (LVD then HPA), 518 px grid, 4 fixed channels",
               "vit_large", 14, 518, {"name": "fixed"}, {"img_size": 518, "features": {"n_last_blocks": 1,
                                                                                        "avgpool": False}},
               channel_names=("microtubules", "protein", "dna", "er"),
               unverified=("channel order microtubules, protein, nucleus, ER", "embedding input size 518")),
    _cell_dino("cell_dino_cp_vits8", "Cell-DINO ViT-S/8 on combined Cell Painting, 5 fixed channels, 128 px",
               "vit_small", 8, 128, {"name": "fixed"}, {"img_size": 128, "features": {"n_last_blocks": 1,
                                                                                       "avgpool": False}},
               channel_names=("dna", "er", "rna", "agp", "mito"),
               unverified=("channel order DNA, ER, RNA, AGP, Mito (the JUMP order)",)),
    _cell_dino("channel_adaptive_dino_vitl16", "Channel-Adaptive DINO ViT-L/16, bag of channels (any channels)",
               "vit_large", 16, 224, {"name": "bag_of_channels", "aggregate": "concat"},
               {"img_size": 224, "features": {"n_last_blocks": 1, "avgpool": True}},
               citation=CHANNEL_ADAPTIVE_CITATION,
               unverified=("features: per-channel CLS and mean patch token, concatenated over channels "
                           "(read from the fork's CHAMMI evaluation, not from a released config)",)),
    ModelCard(
        name="chammi75_morphem", summary="CHAMMI-75 MorphEm ViT-S (384-d), bag of channels, 224 px (MIT)",
        backbone={"name": "vit_small", "patch_size": 16, "img_size": 224, "layerscale_init": None},
        channels={"name": "bag_of_channels", "aggregate": "concat"},
        normalize={"mode": "per_image", "eps": 1.0e-7},
        embed={"img_size": 224, "features": {"n_last_blocks": 1, "avgpool": False}},
        license="MIT", source="Hugging Face CaicedoLab/MorphEm (model.safetensors; loaded with trust_remote_code)",
        download_url="https://huggingface.co/CaicedoLab/MorphEm/resolve/main/model.safetensors",
        file_name="model.safetensors",
        citation="CHAMMI-75 / MorphEm, CaicedoLab, ICLR 2026 (arXiv:2512.20833)",
        verified=("MIT licence, safetensors file renamed to model.safetensors, custom code: the Hugging Face "
                  "repository page", "bag of channels, 384-d CLS per channel, saturation noise, per-image "
                  "instance normalisation, resize to 224: the MorphEm model description"),
        unverified=("patch size 16 and no LayerScale", "that the file's key layout is the DINOv2 / DINO one cellssl "
                    "loads (run `cellssl weights inspect` on it)",
                    "each channel is fed as 3 identical input channels by the reference: a 3-channel stem would "
                    "need its kernels summed to load into a 1-channel backbone"),
        notes=("the saturation-noise step of the reference is not applied",),
    ),
    ModelCard(
        name="unidino_vits16", summary="uniDINO DINO v1 ViT-S/16 on single channels, per-channel concat",
        backbone={"name": "vit_small", "patch_size": 16, "img_size": 224, "layerscale_init": None},
        channels={"name": "per_channel_concat", "channel_order": ["dna", "er", "rna", "agp", "mito"],
                  "missing": "zeros"},
        normalize={"mode": "scale"},
        embed={"img_size": 224, "features": {"n_last_blocks": 1, "avgpool": False}},
        license="unverified (see the uniDINO repository)", source="the uniDINO repository and paper",
        file_name="unidino_vits16.pth",
        citation="uniDINO: cite as its repository says (not checked here)",
        verified=("DINO ViT-S/16 trained on single channels; each channel embedded alone and concatenated "
                  "(C x 384); 16-bit data divided by 65535: the project's notes on the uniDINO code",),
        unverified=("where the weights are published, their licence and file name", "the 224 px input size",
                    "the channel order of the concatenation (Cell Painting order here)"),
    ),
    ModelCard(
        name="dino4cells_vits16", summary="Dino4Cells DINO v1 ViT-S/16, fixed channels of its training data",
        backbone={"name": "vit_small", "patch_size": 16, "img_size": 224, "layerscale_init": None},
        channels={"name": "fixed"}, channel_names=("microtubules", "protein", "dna", "er"),
        normalize={"mode": "per_image", "eps": 1.0e-7},
        embed={"img_size": 224, "features": {"n_last_blocks": 1, "avgpool": False}},
        license="unverified (see broadinstitute/Dino4Cells_code)",
        source="broadinstitute/Dino4Cells_code and Dino4Cells_analysis (Zenodo records of the paper)",
        file_name="dino4cells_vits16.pth", key_prefix=None,
        citation=("Doron et al., Unbiased single-cell morphology with self-supervised vision transformers, "
                  "bioRxiv 2023.06.16.545359"),
        verified=("DINO v1 ViTs (archs vit_tiny / small / base) trained with Dino4Cells_code: its README",),
        unverified=("which released checkpoint is ViT-S/16 and on which data (HPA, WTC-11, Cell Painting)",
                    "channels, normalisation and input size", "licence and download location"),
    ),
    *(_dinov2(arch, short, reg) for arch, short in (("vit_small", "vits"), ("vit_base", "vitb"),
                                                      ("vit_large", "vitl")) for reg in (False, True)),
)
