"""asv benchmarks of daskgru: eager kernels, graph building, dask compute, workers, memory.

Set DASKGRU_ASV_TINY=1 to run every benchmark on tiny sizes (the test suite does, so that
the suite cannot rot without CI noticing).
"""
