"""The one numerics setting that changes bits: whether the matrix products use fused
multiply-adds.

``daskgru.fma`` (a dask config key; ``dask.config.set({"daskgru.fma": False})``, or the
environment variable ``DASK_DASKGRU__FMA=False``), default ``True``:

``True``
    every product of the input projection, the recurrent step, the backward and the dense
    layers adds each term with a fused multiply-add (``x * w + s`` rounded once).
``False``
    each term is a rounded multiply followed by a rounded add: the order of the plain
    loops (``daskgru.reference``) and of daskgru before 2026-12-02.

Either way every element is computed in one fixed order (the bias, then the terms in index
order), so results do not depend on time or batch chunking, threads, the scheduler, the
worker that ran a chunk, the tile shape chosen for the CPU, or the CPU itself (an FMA is
exactly rounded on every CPU; one without FMA instructions computes it in software, slowly).
The two settings give different bits (a few ulp apart). FMAs are the faster on every x86-64
core measured (on an AMD Zen 4 the products ran 25-40% faster; cores whose adds share the
FMA ports gain up to 2x), hence the default.

The setting is read once per call on the client, where the graph is built (or the eager
call made), travels with the prepared weights to every worker, is part of the graph's
token and of a resumable run's fingerprint, and is reported in ``return_info``. It is
never chosen by timing.
"""
from __future__ import annotations

__all__ = ["use_fma"]


def use_fma() -> bool:
    """The ``daskgru.fma`` setting now (default True); refuses anything but a boolean."""
    import dask

    v = dask.config.get("daskgru.fma", True)
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        v = v.strip().lower() in ("true", "1", "yes")
    if not isinstance(v, bool):
        raise ValueError(f"daskgru.fma must be True or False, got {v!r}")
    return v
