"""Numba's disk cache with a key that is the same in every process.

Numba keys a cached function on its bytecode and on ``pickle.dumps`` of its closure
variables. A closure variable that is itself a jitted function (the kernels close over
their inlined step, ``product`` over its row drivers) pickles with an identifier drawn
afresh in each process, so that key never matched again: every process compiled the
kernels anew (seconds each) and appended one more entry to the cache.

:class:`StableCache` describes closure variables by what they are instead: plain values by
value; functions, jitted functions and intrinsics by module, name, code (bytecode,
constants and names, nested code included) and, recursively, their own closures. Anything
else is refused when the cache key is computed (a kernel would otherwise be cached under
a key that does not cover it). :func:`njit_cached` is ``numba.njit`` with it.
"""
from __future__ import annotations

import hashlib
import types as pytypes

import numba
import numpy as np
from numba.core.caching import FunctionCache

__all__ = ["StableCache", "njit_cached", "describe"]

_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _code(co: pytypes.CodeType) -> tuple:
    return (co.co_code, co.co_names, co.co_varnames,
            tuple(_code(c) if isinstance(c, pytypes.CodeType)
                  else repr(sorted(c, key=repr)) if isinstance(c, frozenset) else repr(c)
                  for c in co.co_consts))


def describe(v, _seen=None):
    """A description of a closure variable that is equal in every process exactly when
    the value (or the code it stands for) is."""
    seen = set() if _seen is None else _seen
    if isinstance(v, _PLAIN):
        return (type(v).__name__, repr(v))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(describe(x, seen) for x in v))
    if isinstance(v, (np.dtype, numba.types.Type)):
        return (type(v).__name__, str(v))
    func = getattr(v, "py_func", None) or getattr(v, "_defn", None) or v
    if isinstance(func, pytypes.FunctionType):
        if id(func) in seen:  # a function reached again (recursion): named, not described
            return ("again", func.__module__, func.__qualname__)
        seen.add(id(func))
        cells = tuple(describe(c.cell_contents, seen) for c in (func.__closure__ or ()))
        defaults = (describe(func.__defaults__ or (), seen),
                    describe(sorted((func.__kwdefaults__ or {}).items()), seen))
        options = getattr(v, "targetoptions", None)
        return ("function", type(v).__name__, func.__module__, func.__qualname__,
                _code(func.__code__), cells, defaults, repr(sorted((options or {}).items())))
    raise TypeError(f"cannot key Numba's cache on a closure variable of type "
                    f"{type(v).__name__}: {v!r}")


class StableCache(FunctionCache):
    """Numba's ``FunctionCache`` keyed on :func:`describe` of the closure, not its pickle."""

    def _index_key(self, sig, codegen):
        f = self._py_func
        cells = describe(tuple(c.cell_contents for c in (f.__closure__ or ())))
        digest = hashlib.sha256(repr((_code(f.__code__), cells)).encode()).hexdigest()
        return (sig, codegen.magic_tuple(), (digest,))


def njit_cached(func, signatures=(), **options):
    """``numba.njit(signatures, cache=True, **options)(func)`` with :class:`StableCache`:
    compiled now for each of ``signatures`` (then compiling nothing else), or lazily when
    there are none."""
    disp = numba.njit(**options)(func)
    disp._cache = StableCache(func)
    if signatures:
        from numba.core import typeinfer

        with typeinfer.register_dispatcher(disp):
            for sig in signatures:
                disp.compile(sig)
        disp.disable_compile()
    return disp
