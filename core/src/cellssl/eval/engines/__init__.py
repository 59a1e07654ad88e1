"""The engines the evaluators share, independent of the evaluator contract: faiss kNN classification
(:mod:`~cellssl.eval.engines.knn`) and its indexes (:mod:`~cellssl.eval.engines.knn_index`), the linear probe
(:mod:`~cellssl.eval.engines.linear_probe`) and its grid of heads (:mod:`~cellssl.eval.engines.linear_heads`),
classification metrics, train/test splits, per-well profiles, average precision with null p-values and the PNG
helpers. Engines take arrays and tables, not evaluator configs; nothing here imports :mod:`cellssl.eval`'s
evaluators.
"""
