"""cellssl plugin for Human Protein Atlas images: single cells (HPAone) and fields of view (HPA-FoV, Kaggle).

Entry point: :mod:`cellssl_hpa.plugin`. Datasets: :mod:`cellssl_hpa.dataset`; class lists:
:mod:`cellssl_hpa.classes`; training augmentations: :mod:`cellssl_hpa.augment`.
"""

__version__ = "0.1.0"
