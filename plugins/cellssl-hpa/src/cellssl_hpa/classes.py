"""Label sets and channels of the published HPA tables (standard library only).

The names are the column names of the published CSVs; their order is the class index order of Cell-DINO's
loaders (``dinov2/data/datasets/cell_dino/hpaone.py`` and ``hpafov.py``): the index of a localisation class
in a label vector, and of a cell line in ``cell_type`` mode.
"""

from __future__ import annotations

# HPAone (masked single cells): 19 protein-localisation classes, one True/False column each.
SINGLE_CELL_CLASSES: tuple[str, ...] = (
    "actin filaments,focal adhesion sites",
    "aggresome",
    "centrosome,centriolar satellite",
    "cytosol",
    "endoplasmic reticulum",
    "golgi apparatus",
    "intermediate filaments",
    "microtubules",
    "mitochondria",
    "mitotic spindle",
    "no staining",
    "nuclear bodies",
    "nuclear membrane",
    "nuclear speckles",
    "nucleoli",
    "nucleoli fibrillar center",
    "nucleoplasm",
    "plasma membrane,cell junctions",
    "vesicles,peroxisomes,endosomes,lysosomes,lipid droplets,cytoplasmic bodies",
)

# HPAone: 29 cell lines, one-hot True/False columns.
SINGLE_CELL_LINES: tuple[str, ...] = (
    "A-431", "A549", "AF22", "ASC TERT1", "BJ", "CACO-2", "EFO-21", "HAP1", "HDLM-2", "HEK 293", "HEL",
    "HUVEC TERT2", "HaCaT", "HeLa", "Hep G2", "JURKAT", "K-562", "MCF7", "PC-3", "REH", "RH-30", "RPTEC TERT1",
    "RT4", "SH-SY5Y", "SK-MEL-30", "SiHa", "U-2 OS", "U-251 MG", "hTCEpi",
)

# HPA fields of view: the 28 classes of the Kaggle 2018 challenge, in Kaggle's index order (the `Target`
# column of Kaggle's train.csv holds these indices; the HPA-FoV CSV has one True/False column per name).
FOV_CLASSES: tuple[str, ...] = (
    "nucleoplasm", "nuclear membrane", "nucleoli", "nucleoli fibrillar center", "nuclear speckles",
    "nuclear bodies", "endoplasmic reticulum", "golgi apparatus", "peroxisomes", "endosomes", "lysosomes",
    "intermediate filaments", "actin filaments", "focal adhesion sites", "microtubules", "microtubule ends",
    "cytokinetic bridge", "mitotic spindle", "microtubule organizing center", "centrosome", "lipid droplets",
    "plasma membrane", "cell junctions", "mitochondria", "aggresome", "cytosol", "cytoplasmic bodies",
    "rods & rings",
)

# HPA fields of view: 35 cell lines (the `cell_type` column).
FOV_CELL_LINES: tuple[str, ...] = (
    "BJ", "LHCN-M2", "RH-30", "SH-SY5Y", "U-2 OS", "ASC TERT1", "HaCaT", "A-431", "U-251 MG", "HEK 293", "A549",
    "RT4", "HeLa", "MCF7", "PC-3", "hTERT-RPE1", "SK-MEL-30", "EFO-21", "AF22", "HEL", "Hep G2", "HUVEC TERT2",
    "THP-1", "CACO-2", "JURKAT", "RPTEC TERT1", "SuSa", "REH", "HDLM-2", "K-562", "hTCEpi", "NB-4", "HAP1", "OE19",
    "SiHa",
)

# The four stains in file order (RGBA planes of a 4-channel PNG; Kaggle's red, green, blue, yellow files).
PUBLISHED_CHANNELS: tuple[str, ...] = ("microtubules", "protein", "nucleus", "er")
CHANNELS: tuple[str, ...] = ("microtubules", "protein", "dna", "er")  # cellssl vocabulary: nucleus -> dna
KAGGLE_SUFFIXES: tuple[str, ...] = ("red", "green", "blue", "yellow")
PROTEIN = "protein"

LOCALIZATION_COLUMN = "protein_localization"  # derived: the row's classes joined by "|"
CELL_TYPE_COLUMN = "cell_type"
CELL_TYPE_INDEX_COLUMN = "cell_type_index"  # derived: position of the cell line in the published list, -1 if none
SPLIT_COLUMN = "split"
