"""The float32 GRU rows of ``compare.py --engines`` in the asv suite: daskgru and the CPU
inference engines a user might pick instead (ONNX Runtime, OpenVINO, JAX; see
benchmarks/engines.py), each on the same weights and input, one thread. An engine that is
not installed is skipped."""
import os
import sys

import daskgru as dg

from .common import problem, size

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engines  # noqa: E402 (benchmarks/engines.py)


class GRUEngines:
    params = (
        [(4096, 1, 8, 32), (4096, 32, 16, 64), (1024, 64, 64, 256), (512, 256, 128, 512)],
        ["daskgru", *engines.ENGINES],
    )
    param_names = ["T_B_I_H", "engine"]
    timeout = 600

    def setup(self, shape, engine):
        T, B, I, H = shape
        T = size(T, 8)
        p, x = problem(T, B, I, H, "float32")
        self._threads = os.environ.get("DASKGRU_NUM_THREADS")
        os.environ["DASKGRU_NUM_THREADS"] = "1"
        want = dg.gru(x, p)[0]
        if engine == "daskgru":
            self.run = lambda: dg.gru(x, p)
            return
        if engine not in engines.available():
            raise NotImplementedError(f"{engine} is not installed")  # asv: skipped
        if engine == "jax":
            engines.start_jax()
        self.run = engines.RUNNERS[engine](p, x, threads=1)
        engines.check(engine, self.run(), want)  # also warms it up outside the timing

    def teardown(self, shape, engine):
        if self._threads is None:
            os.environ.pop("DASKGRU_NUM_THREADS", None)
        else:
            os.environ["DASKGRU_NUM_THREADS"] = self._threads

    def time_gru(self, shape, engine):
        self.run()
