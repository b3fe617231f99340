import os

# Keras 3 runs on the NumPy backend in tests; set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# Tolerances that fit the dtype (relative to the size of the values, which are O(1)).
TOL = {np.dtype("float32"): dict(rtol=2e-6, atol=2e-6), np.dtype("float64"): dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(autouse=True)
def _user_chunks():
    """Tests pick small time chunks to exercise chunk boundaries; the scan's default merges
    such chunks into bigger tasks (``daskgru.merge-chunks``), which would leave one chunk
    and no boundary. Tests run on the chunks they give; the tests of merging set it."""
    import dask

    with dask.config.set({"daskgru.merge-chunks": False}):
        yield
