"""cellssl plugin for the CHAMMI benchmark (Chen et al., NeurIPS 2023 Datasets and Benchmarks).

Entry point: :mod:`cellssl_chammi.plugin`. Datasets live in :mod:`cellssl_chammi.dataset`, the evaluation
protocol in :mod:`cellssl_chammi.protocol` and :mod:`cellssl_chammi.evaluator`, the result tables in
:mod:`cellssl_chammi.table`.
"""

__version__ = "0.1.0"
