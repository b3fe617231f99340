"""What every cell's kernels share: register-tiled matrix products with one fixed order of
operations per element (:mod:`.tiles`), and the kernel declaration with the scalar
functions inlined into kernels (:mod:`.jit`). Nothing here knows a cell's equations."""
from .tiles import product

__all__ = ["product"]
