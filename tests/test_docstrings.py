"""The examples in the docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = ["daskgru.api", "daskgru.params", "daskgru.stack", "daskgru.convert", "daskgru.eager",
           "daskgru.xarray", "daskgru.cells.base", "daskgru.cells.gru", "daskgru.cells.lstm",
           "daskgru.kernels.jit", "daskgru.kernels.tiles", "daskgru.graph.builder",
           "daskgru.graph.options", "daskgru.graph.scan", "daskgru.graph.parallel_time",
           "daskgru.graph.backward", "daskgru.train.backward", "daskgru.train.regressor",
           "daskgru.run", "daskgru.cli", "daskgru.model", "daskgru.layers", "daskgru.importers",
           "daskgru.neuralhydrology"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0


def test_public_functions_have_examples():
    import daskgru as dg

    for obj in (dg.gru, dg.lstm, dg.apply_gru, dg.apply_rnn, dg.GRUParams, dg.GRUParams.random,
                dg.LSTMParams, dg.Stack, dg.gru_backward, dg.lstm_backward, dg.GRURegressor):
        assert ">>>" in (obj.__doc__ or ""), obj
