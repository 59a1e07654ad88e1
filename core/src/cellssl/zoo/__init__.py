"""The model zoo: released models by name (model cards), checkpoint inspection and export, benchmarks.

Importing this package imports no torch: :mod:`cellssl.zoo.card` and :mod:`cellssl.zoo.cards` are plain data;
:mod:`cellssl.zoo.inspect` and :mod:`cellssl.zoo.export` import torch when called.
"""
