"""Eager NumPy path: the Numba kernels on the issue's shapes."""
import numpy as np

import daskgru as dg
from daskgru.kernels.tiles import product

from .common import problem, size


class EagerGRU:
    params = (
        [(4096, 1, 8, 32), (4096, 32, 16, 64), (1024, 64, 64, 256), (512, 256, 128, 512)],
        ["float32", "float64"],
    )
    param_names = ["T_B_I_H", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        T, B, I, H = shape
        T = size(T, 8)
        self.p, self.x = problem(T, B, I, H, dtype)
        dg.gru(self.x[:2], self.p)  # JIT outside the timing

    def time_gru(self, shape, dtype):
        dg.gru(self.x, self.p)

    def peakmem_gru(self, shape, dtype):
        dg.gru(self.x, self.p)


class EagerVariants:
    params = ([1, 3], [False, True], [True, False])
    param_names = ["num_layers", "bidirectional", "reset_after"]

    def setup(self, num_layers, bidirectional, reset_after):
        T = size(2048, 8)
        self.p = dg.GRUParams.random(16, 64, num_layers=num_layers, bidirectional=bidirectional,
                                     reset_after=reset_after, seed=0)
        self.x = problem(T, 16, 16, 64)[1]
        dg.gru(self.x[:2], self.p)

    def time_gru(self, num_layers, bidirectional, reset_after):
        dg.gru(self.x, self.p)


class TiledProduct:
    """The register-tiled product alone: one step's recurrent product (rows = batch) and a
    chunk's input projection (rows = steps x batch)."""
    params = ([(1, 32, 96), (32, 64, 192), (256, 512, 1536), (8192, 16, 192)],
              ["float32", "float64"])
    param_names = ["M_K_N", "dtype"]

    def setup(self, shape, dtype):
        M, K, N = shape
        M = size(M, min(M, 16))
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((M, K)).astype(dtype)
        self.w = rng.standard_normal((K, N)).astype(dtype)
        self.b = rng.standard_normal(N).astype(dtype)
        self.out = np.empty((M, N), dtype)
        self.time_product(shape, dtype)  # JIT outside the timing

    def time_product(self, shape, dtype):
        product(self.a, 0, self.a.shape[0], self.w, self.b, 0, self.w.shape[1], self.out, 0)
