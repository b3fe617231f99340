"""The Dask graph: one builder (:mod:`.builder`) on which every method builds its chains —
the scan (:mod:`.scan`), the parallel-in-time methods (:mod:`.parallel_time`) and the
backward pass (:mod:`.backward`) — with the options that shape it (:mod:`.options`)."""
