"""Test helpers shipped with cellssl for the core's and plugins' test suites.

The pytest plugin :mod:`cellssl.testing.pytest_plugin` (registered through the ``pytest11`` entry point)
provides the ``shared_data`` fixture: the folder of real microscopy samples, found through
``CELLSSL_TEST_DATA`` or as ``shared/data`` beside (or above) the project checkout.
"""
