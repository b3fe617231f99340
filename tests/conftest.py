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
