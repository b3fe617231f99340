"""The examples in the docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = ["daskgru.params", "daskgru.scan", "daskgru.xarray", "daskgru.core", "daskgru.train",
           "daskgru.parallel_time", "daskgru.kernels", "daskgru.run", "daskgru.cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0


def test_public_functions_have_examples():
    import daskgru as dg

    for obj in (dg.gru, dg.apply_gru, dg.GRUParams, dg.GRUParams.random, dg.gru_backward,
                dg.GRURegressor):
        assert ">>>" in (obj.__doc__ or ""), obj
