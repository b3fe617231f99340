import os

import numpy as np

import daskgru as dg

TINY = bool(os.environ.get("DASKGRU_ASV_TINY"))


def size(full, tiny):
    return tiny if TINY else full


def problem(T, B, I, H, dtype="float32", seed=0):
    """Fixed-seed params and input."""
    p = dg.GRUParams.random(I, H, seed=seed, dtype=dtype)
    x = np.random.default_rng(seed).standard_normal((T, B, I)).astype(dtype)
    return p, x
