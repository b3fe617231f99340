"""The seed document's Spark operator: recurrent models over long-format Spark tables.

:class:`RNNTransformer` runs params, a stack or a :class:`daskgru.Model` along time for every
series of a DataFrame with one row per (series id, time): the series are grouped by a hash
of their id, each group is one ``applyInPandas`` call running its series as the rows of one
batch with the package's kernels (the same code as :func:`daskgru.apply_frame`), and every
row gets its output (or prediction) as an array column. Series longer than one task should hold are cut into time chunks of
``maxStepsPerTask`` steps and run in waves, as the seed describes: wave k runs every series'
k-th chunk from the state its (k-1)-th chunk ended in, a small per-series state table that
is checkpointed between waves so that no lineage grows.

:class:`GRUEstimator` trains a GRU with a linear head on such a table, data-parallel: each
optimiser step, every partition computes the gradient sums of its next ``batchSize``
sequences (:func:`daskgru.train.regressor.window_grad`, backpropagation through time), the
sums are added up in a tree (``treeReduce``) and the driver steps Adam. The data are never
collected to the driver: it holds the weights and one gradient. ``fit`` gives a
:class:`GRUModel`, a Transformer holding the trained :class:`daskgru.Model`.

All three save and load with Spark ML persistence (``save``/``load``, ``write().overwrite()``).
Needs ``pyspark >= 4`` (the ``[spark]`` extra) and Java 17.
"""
from __future__ import annotations

import functools
import os
import tempfile

import numpy as np

try:
    from pyspark.ml import Estimator, Model as _SparkModel, Transformer
    from pyspark.ml.param import Param, Params, TypeConverters
    from pyspark.ml.param.shared import (HasInputCols, HasLabelCol, HasOutputCol,
                                         HasPredictionCol, HasSeed)
    from pyspark.ml.util import (DefaultParamsReader, DefaultParamsWriter, MLReadable,
                                 MLReader, MLWritable, MLWriter)
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("daskgru.spark needs pyspark >= 4: pip install 'daskgru[spark]' (and "
                      "Java 17 on PATH)") from e

__all__ = ["RNNTransformer", "GRUEstimator", "GRUModel"]

_STEP, _WAVE, _STATE, _LAST, _BUCKET = ("__daskgru_step", "__daskgru_wave",
                                        "__daskgru_state", "__daskgru_last", "__daskgru_bucket")


# ----------------------------------------------------------------------------- model bytes
def _model_bytes(model) -> bytes:
    """A daskgru Model as the bytes of its netCDF file (what ``Model.save`` writes)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.nc")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def _model_from_bytes(data: bytes):
    from .model import load_model

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.nc")
        with open(path, "wb") as f:
            f.write(data)
        return load_model(path)


class _Writer(MLWriter):
    """Params as Spark ML metadata (JSON), the model as one binary row of Parquet in
    ``path/data`` (through Spark, so any Hadoop file system works)."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path):
        inst = self.instance
        plain = {p.name: v for p, v in inst._paramMap.items() if p.name != "model"}
        DefaultParamsWriter.saveMetadata(inst, path, self.sc, paramMap=plain)
        model = inst.getOrDefault("model") if inst.isDefined("model") else None
        if model is not None:
            rows = [(bytearray(_model_bytes(_as_model(model))),)]
            self.sparkSession.createDataFrame(rows, "model binary").write.parquet(
                os.path.join(path, "data"))


class _Reader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path):
        metadata = DefaultParamsReader.loadMetadata(path, self.sc)
        inst = self.cls()
        inst._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(inst, metadata)
        data = os.path.join(path, "data")
        try:
            rows = self.sparkSession.read.parquet(data).collect()
        except Exception:  # noqa: BLE001 - no data: saved without a model
            rows = []
        if rows:
            inst._set(model=_model_from_bytes(bytes(rows[0][0])))
        return inst


class _Persist(MLReadable, MLWritable):
    def _init(self, defaults, given):
        """Set defaults, then the given values (``model`` and ``inputCols`` only if given)."""
        self._setDefault(**defaults)
        self._set(**{k: (list(v) if k == "inputCols" else v) for k, v in given.items()
                     if v is not None or k not in ("model", "inputCols")})

    def write(self):
        return _Writer(self)

    @classmethod
    def read(cls):
        return _Reader(cls)


def _as_model(p):
    from .frame import _model

    return _model(p)


# ----------------------------------------------------------------------------- checks
def _check_table(df, id_col, time_col, input_cols, *, extra=(), new=()):
    """Columns present and numeric where they must be; output columns not taken."""
    from pyspark.sql.types import BooleanType, NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    for what, col in (("idCol", id_col), ("timeCol", time_col), *extra):
        if col not in fields:
            raise ValueError(f"{what} {col!r} is not a column of the DataFrame; columns: "
                             f"{list(fields)}")
    if not input_cols:
        raise ValueError("inputCols must name the feature columns")
    missing = [c for c in input_cols if c not in fields]
    if missing:
        raise ValueError(f"inputCols {missing} are not columns of the DataFrame; columns: "
                         f"{list(fields)}")
    bad = [c for c in list(input_cols) + [c for w, c in extra if w == "labelCol"]
           if not isinstance(fields[c], NumericType) or isinstance(fields[c], BooleanType)]
    if bad:
        raise TypeError(f"columns {bad} are not numeric (types "
                        f"{[fields[c].simpleString() for c in bad]})")
    taken = [c for c in new if c in fields]
    if taken:
        raise ValueError(f"output column {taken[0]!r} is already a column of the DataFrame")


def _check_rows(df, id_col, time_col):
    """One job: null ids or times and duplicate (id, time) rows are refused, named."""
    from pyspark.sql import functions as F

    bad = (df.groupBy(id_col, time_col).count()
           .where((F.col("count") > 1) | F.col(id_col).isNull() | F.col(time_col).isNull())
           .limit(1).collect())
    if bad:
        i, t, _ = bad[0]
        if i is None or t is None:
            raise ValueError(f"id column {id_col!r} or time column {time_col!r} holds nulls")
        raise ValueError(f"duplicate ({id_col}, {time_col}) rows, e.g. ({i!r}, {t!r}): each "
                         "series may have one row per time")


def _checkpoint(df):
    """Cut the lineage: a reliable checkpoint where a checkpoint directory is set, else a
    local one (kept by the executors)."""
    sc = df.sparkSession.sparkContext
    if sc.getCheckpointDir():
        return df.checkpoint(eager=True)
    return df.localCheckpoint(eager=True)


# ----------------------------------------------------------------------------- transformer
class _TableParams(HasInputCols):
    idCol = Param(Params._dummy(), "idCol", "column naming each row's series",
                  typeConverter=TypeConverters.toString)
    timeCol = Param(Params._dummy(), "timeCol", "column ordering each series' rows",
                    typeConverter=TypeConverters.toString)
    model = Param(Params._dummy(), "model", "GRUParams, LSTMParams, a stack or a "
                  "daskgru.Model", typeConverter=TypeConverters.identity)
    maxStepsPerTask = Param(Params._dummy(), "maxStepsPerTask",
                            "the most steps of one series one task runs (longer series run "
                            "in waves of time chunks, carrying their states); 0: no limit",
                            typeConverter=TypeConverters.toInt)
    numBuckets = Param(Params._dummy(), "numBuckets",
                       "groups of series (by a hash of the id), each one applyInPandas call "
                       "running its series as one batch; 0: four per core",
                       typeConverter=TypeConverters.toInt)
    skipNA = Param(Params._dummy(), "skipNA", "a row with a null or NaN feature is missing: "
                   "the state carries across it and its output is NaN",
                   typeConverter=TypeConverters.toBoolean)


def _run_groups(df, m, id_col, time_col, input_cols, out_col, max_steps, skipna, scalar,
                buckets=0):
    """The rows of ``df`` with ``out_col`` added: one array (or, ``scalar``, one number) of
    outputs per row, from the model run along each series in time order (windowed when the
    model has a window, as :func:`daskgru.apply_frame` runs it).

    Series go into ``buckets`` groups by a hash of their id (0: four per core of the
    session); each group is one ``applyInPandas`` call that runs all its series as the rows
    of one batch, the way :func:`daskgru.apply_frame` runs a table."""
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    from . import frame

    if max_steps and (m.window is not None or any(lay.num_directions == 2
                                                  for lay in m.rnn.layers)):
        raise ValueError("a bidirectional stack or a windowed model needs each series whole: "
                         "maxStepsPerTask must be 0")
    c = frame.Columns(id_col, time_col, list(input_cols),
                      [f"__daskgru_o{k}" for k in range(m.output_size)], "output")
    # float32 features compute (and come back) in float32, anything else in float64
    single = all(isinstance(f.dataType, T.FloatType) for f in df.schema.fields
                 if f.name in input_cols)
    elem = T.FloatType() if single else T.DoubleType()
    out_type = elem if scalar else T.ArrayType(elem, containsNull=True)
    base = df.schema
    cols = [f.name for f in base.fields]
    out_schema = T.StructType(base.fields + [T.StructField(out_col, out_type, True)])
    state_schema = T.StructType(out_schema.fields + [
        T.StructField(_STATE, T.ArrayType(T.DoubleType(), False), True)])
    n = buckets or 4 * df.sparkSession.sparkContext.defaultParallelism
    bucket = F.pmod(F.hash(F.col(id_col)), F.lit(n))

    def run(rows, carried):
        res, states = frame._run_table(rows[cols], m, c, skipna, False, m.window, carried)
        vals = res[c.outputs].to_numpy()
        out = res.drop(columns=c.outputs)
        out[out_col] = vals[:, 0] if scalar else list(vals)
        return out, states

    if not max_steps:
        return df.groupBy(bucket.alias(_BUCKET)).applyInPandas(lambda rows: run(rows, None)[0],
                                                               out_schema)

    # Waves: every series' k-th chunk of max_steps steps, from the state its chunk k-1
    # ended in (carried in a per-series state table, checkpointed each wave).
    steps = df.withColumn(_STEP, F.row_number().over(
        Window.partitionBy(id_col).orderBy(time_col)) - 1)
    steps = _checkpoint(steps.withColumn(_WAVE, (F.col(_STEP) / max_steps).cast("int")))
    waves = steps.agg(F.max(_WAVE)).collect()[0][0]
    waves = 0 if waves is None else int(waves) + 1

    def wave_task(rows, state):
        if not len(rows):  # the bucket's series all ended in earlier waves
            return pd.DataFrame({f.name: pd.Series([], dtype=object)
                                 for f in state_schema.fields})
        carried = None
        if len(state):
            carried = frame.States(state[id_col].to_numpy(), np.stack(state[_STATE].to_numpy()),
                                   state[_LAST].to_numpy())
        out, st = run(rows, carried)
        # each series' state goes with its last row of the wave
        t = out[time_col]
        last = t.to_numpy() == t.groupby(out[id_col]).transform("max").to_numpy()
        pos = pd.Index(st.ids).get_indexer(out[id_col].to_numpy()[last])
        states = np.empty(len(out), dtype=object)
        states[np.flatnonzero(last)] = list(st.states[pos].astype("float64"))
        out[_STATE] = states
        return out

    outs, state = [], None
    for w in range(waves):
        part = steps.where(F.col(_WAVE) == w).select(*cols)
        grouped = part.groupBy(bucket.alias(_BUCKET))
        if state is None:
            res = grouped.applyInPandas(
                lambda rows: wave_task(rows, pd.DataFrame(columns=[id_col, _STATE, _LAST])),
                state_schema)
        else:
            res = grouped.cogroup(state.groupBy(bucket.alias(_BUCKET))).applyInPandas(
                wave_task, state_schema)
        res = _checkpoint(res)
        outs.append(res.drop(_STATE))
        state = res.where(F.col(_STATE).isNotNull()).select(
            id_col, _STATE, F.col(time_col).alias(_LAST))
    if not outs:
        return df.sparkSession.createDataFrame([], out_schema)
    return functools.reduce(lambda a, b: a.unionByName(b), outs)


class RNNTransformer(Transformer, _TableParams, HasOutputCol, _Persist):
    """Run params, a stack or a model along time for every series of a Spark DataFrame.

    Parameters
    ----------
    model : GRUParams, LSTMParams, Stack or daskgru.Model
    idCol, timeCol : str
        The series id and the time of each row (one row per id and time, rows in any
        order, series of any length).
    inputCols : list of str
        The feature columns, in the model's input order.
    outputCol : str
        The array column added: the top layer's outputs (params) or the model's
        predictions, one array per row.
    maxStepsPerTask : int
        0 (default): each series runs whole. Otherwise series run in waves of at most
        this many steps each, each wave from the states the one before ended in.
    numBuckets : int
        Series are grouped by a hash of their id into this many groups (0, the default:
        four per core of the session); a group is one ``applyInPandas`` call, which runs
        all its series as the rows of one batch.
    skipNA : bool
        Rows with a null or NaN feature are missing (see :func:`daskgru.apply_frame`).

    ``transform`` first runs one validation job (duplicate (id, time) rows, null ids or
    times); the outputs equal :func:`daskgru.apply_frame` on the same rows, bit for
    bit in the features' float type (a model with a window runs windowed, as there). A
    sequence-to-one model is refused (one output per row).

    Examples
    --------
    >>> from daskgru.spark import RNNTransformer                    # doctest: +SKIP
    >>> t = RNNTransformer(model=dg.GRUParams.random(2, 8), idCol="station",
    ...                    timeCol="day", inputCols=["rain", "temp"], outputCol="h")
    >>> t.transform(spark_df).select("station", "day", "h").show()  # doctest: +SKIP
    """

    def __init__(self, *, model=None, idCol="id", timeCol="time", inputCols=None,
                 outputCol="output", maxStepsPerTask=0, numBuckets=0, skipNA=False):
        super().__init__()
        self._init(dict(idCol="id", timeCol="time", outputCol="output", maxStepsPerTask=0,
                        numBuckets=0, skipNA=False),
                   dict(model=model, idCol=idCol, timeCol=timeCol, inputCols=inputCols,
                        outputCol=outputCol, maxStepsPerTask=maxStepsPerTask,
                        numBuckets=numBuckets, skipNA=skipNA))

    def setModel(self, value):
        return self._set(model=value)

    def _transform(self, df):
        if not self.isDefined("model"):
            raise ValueError("RNNTransformer needs a model (params, a stack or a daskgru.Model)")
        m = _as_model(self.getOrDefault("model"))
        if not m.return_sequences:
            raise ValueError("RNNTransformer gives one output per row: a sequence-to-one model "
                             "has one per series")
        id_col, time_col = self.getOrDefault("idCol"), self.getOrDefault("timeCol")
        inputs = self.getOrDefault("inputCols") if self.isDefined("inputCols") else m.inputs
        _check_table(df, id_col, time_col, inputs or [], new=[self.getOrDefault("outputCol")])
        if len(inputs) != m.input_size:
            raise ValueError(f"{len(inputs)} inputCols {inputs}, but the model takes "
                             f"{m.input_size} inputs")
        _check_rows(df, id_col, time_col)
        return _run_groups(df, m, id_col, time_col, inputs, self.getOrDefault("outputCol"),
                           self.getOrDefault("maxStepsPerTask"),
                           self.getOrDefault("skipNA"), scalar=False,
                           buckets=self.getOrDefault("numBuckets"))


# ----------------------------------------------------------------------------- training
class _TrainParams(_TableParams, HasLabelCol, HasPredictionCol, HasSeed):
    hiddenSize = Param(Params._dummy(), "hiddenSize", "GRU width",
                       typeConverter=TypeConverters.toInt)
    numLayers = Param(Params._dummy(), "numLayers", "stacked GRU layers",
                      typeConverter=TypeConverters.toInt)
    maxEpochs = Param(Params._dummy(), "maxEpochs", "passes over the sequences",
                      typeConverter=TypeConverters.toInt)
    learningRate = Param(Params._dummy(), "learningRate", "Adam's step size",
                         typeConverter=TypeConverters.toFloat)
    batchSize = Param(Params._dummy(), "batchSize",
                      "sequences per partition and optimiser step",
                      typeConverter=TypeConverters.toInt)
    sequenceLength = Param(Params._dummy(), "sequenceLength",
                           "steps per training sequence: each series is cut into pieces of "
                           "this length, each run from a zero state (0: whole series)",
                           typeConverter=TypeConverters.toInt)


def _pack(rows, id_col, time_col, inputs, label, length, stats):
    """One series (a pandas group) as training sequences: standardised, cut into pieces of
    ``length`` steps, each a row (id, piece, n, x flattened, y)."""
    import pandas as pd

    rows = rows.sort_values(time_col)
    x = rows[inputs].to_numpy(dtype="float64", na_value=np.nan)
    y = rows[label].to_numpy(dtype="float64", na_value=np.nan)
    mu, sd = stats
    x = (x - mu[:-1]) / sd[:-1]
    y = (y - mu[-1]) / sd[-1]
    n = len(rows)
    L = length or n
    out = []
    for k, a in enumerate(range(0, n, L)):
        b = min(n, a + L)
        out.append((rows[id_col].iloc[0], k, b - a, x[a:b].ravel(), y[a:b]))
    return pd.DataFrame(out, columns=["id", "piece", "n", "x", "y"])


def _partition_batch(pid, rows, F, skipna):
    """The sequences of partition ``pid`` as padded arrays: X (n, T, F), Y (n, T, 1) NaN
    where nothing counts, M (n, T) valid steps."""
    rows = [r.asDict() for r in rows]
    if not rows:
        return []
    T = max(r["n"] for r in rows)
    n = len(rows)
    X = np.zeros((n, T, F))
    Y = np.full((n, T, 1), np.nan)
    M = np.zeros((n, T), bool)
    for i, r in enumerate(rows):
        k = r["n"]
        X[i, :k] = np.asarray(r["x"]).reshape(k, F)
        Y[i, :k, 0] = r["y"]
        M[i, :k] = True
    bad = np.isnan(X).any(axis=-1) & M
    if bad.any():
        if not skipna:
            raise ValueError("an input holds null or NaN; set skipNA=True to treat such rows "
                             "as missing")
        M &= ~bad
        X[np.isnan(X)] = 0.0
        Y[~M] = np.nan
    return [(pid, X, Y, M)]


class GRUEstimator(Estimator, _TrainParams, _Persist):
    """Train a GRU with a linear head on a Spark DataFrame of series, data-parallel.

    Inputs and label are standardised with their mean and standard deviation (one job);
    each series is cut into training sequences of ``sequenceLength`` steps (0: whole);
    every epoch each partition visits its sequences in a random order, ``batchSize`` per
    step. A step is one Spark job: the weights are broadcast, every partition returns the
    loss and gradient sums of its batch, they are added in a tree, and the driver takes
    one Adam step with their mean. Loss: MSE over the steps whose label is not null.

    Examples
    --------
    >>> est = GRUEstimator(idCol="station", timeCol="day", inputCols=["rain", "temp"],
    ...                    labelCol="flow", hiddenSize=16, maxEpochs=20)  # doctest: +SKIP
    >>> model = est.fit(train_df)                                        # doctest: +SKIP
    >>> model.transform(test_df).select("flow", "prediction").show()     # doctest: +SKIP
    """

    def __init__(self, *, idCol="id", timeCol="time", inputCols=None, labelCol="label",
                 predictionCol="prediction", hiddenSize=32, numLayers=1, maxEpochs=20,
                 learningRate=0.01, batchSize=32, sequenceLength=0, seed=0, skipNA=False,
                 maxStepsPerTask=0, numBuckets=0):
        super().__init__()
        given = dict(idCol=idCol, timeCol=timeCol, inputCols=inputCols, labelCol=labelCol,
                     predictionCol=predictionCol, hiddenSize=hiddenSize, numLayers=numLayers,
                     maxEpochs=maxEpochs, learningRate=learningRate, batchSize=batchSize,
                     sequenceLength=sequenceLength, seed=seed, skipNA=skipNA,
                     maxStepsPerTask=maxStepsPerTask, numBuckets=numBuckets)
        self._init(dict(idCol="id", timeCol="time", labelCol="label",
                        predictionCol="prediction", hiddenSize=32, numLayers=1, maxEpochs=20,
                        learningRate=0.01, batchSize=32, sequenceLength=0, seed=0,
                        skipNA=False, maxStepsPerTask=0, numBuckets=0), given)

    def _fit(self, df):
        from pyspark.sql import functions as F

        from .layers import Dense, Scale
        from .model import Model
        from .train.regressor import Adam, _flat_to_params, _params_to_flat, window_grad
        from .params import GRUParams

        g = self.getOrDefault
        id_col, time_col, label = g("idCol"), g("timeCol"), g("labelCol")
        inputs = g("inputCols") if self.isDefined("inputCols") else None
        _check_table(df, id_col, time_col, inputs or [], extra=[("labelCol", label)])
        for name in ("hiddenSize", "numLayers", "maxEpochs", "batchSize"):
            if g(name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {g(name)}")
        if g("sequenceLength") < 0 or not g("learningRate") > 0:
            raise ValueError("sequenceLength must be >= 0 and learningRate > 0")
        _check_rows(df, id_col, time_col)
        cols = list(inputs) + [label]
        skipna = g("skipNA")

        def value(c):  # null and NaN alike are missing
            return F.when(~F.isnan(F.col(c).cast("double")), F.col(c).cast("double"))

        agg = df.select(*[F.mean(value(c)).alias(f"m{i}") for i, c in enumerate(cols)],
                        *[F.stddev_pop(value(c)).alias(f"s{i}") for i, c in enumerate(cols)],
                        *[F.count(value(c)).alias(f"n{i}") for i, c in enumerate(cols)],
                        F.count(F.lit(1)).alias("rows")).collect()[0]
        empty = [c for i, c in enumerate(cols) if not agg[f"n{i}"]]
        if empty:
            raise ValueError(f"columns {empty} have no values (every row null or NaN)")
        gaps = [c for i, c in enumerate(inputs) if agg[f"n{i}"] < agg["rows"]]
        if gaps and not skipna:
            raise ValueError(f"input columns {gaps} hold null or NaN values; set skipNA=True "
                             "to treat such rows as missing")
        mu = np.array([agg[f"m{i}"] for i in range(len(cols))], dtype="float64")
        sd = np.array([agg[f"s{i}"] for i in range(len(cols))], dtype="float64")
        sd = np.where(sd > 0, sd, 1.0)
        F_ = len(inputs)
        length = g("sequenceLength")
        seqs = df.select(id_col, time_col, *cols).groupBy(id_col).applyInPandas(
            functools.partial(_pack, id_col=id_col, time_col=time_col, inputs=list(inputs),
                              label=label, length=length, stats=(mu, sd)),
            _pack_schema(df, id_col))
        sc = df.sparkSession.sparkContext
        packed = seqs.rdd.mapPartitionsWithIndex(
            lambda pid, it: _partition_batch(pid, it, F_, skipna)).cache()
        sizes = packed.map(lambda b: b[1].shape[0]).collect()
        if not sizes:
            raise ValueError("the DataFrame has no rows to train on")
        rng = np.random.default_rng(g("seed"))
        H, L = g("hiddenSize"), g("numLayers")
        p = GRUParams.random(F_, H, num_layers=L, dtype="float64",
                             seed=int(rng.integers(2**31)))
        k = 1.0 / np.sqrt(H)
        flat = _params_to_flat(p) + [rng.uniform(-k, k, size=(1, H)), np.zeros(1)]
        opt = Adam(g("learningRate"))
        bs = g("batchSize")
        steps = -(-max(sizes) // bs)
        base_seed = int(rng.integers(2**31))
        history = []
        try:
            for epoch in range(g("maxEpochs")):
                tot = cnt = 0.0
                for step in range(steps):
                    bc = sc.broadcast((flat[:-2], flat[-2], flat[-1], L, 1, True))

                    def grads(batch, epoch=epoch, step=step, bc=bc):
                        pid, X, Y, M = batch
                        order = np.random.default_rng(
                            [base_seed, epoch, pid]).permutation(X.shape[0])
                        idx = np.sort(order[step * bs:(step + 1) * bs])
                        if not len(idx):
                            return None
                        return window_grad(bc.value, X, Y, M, idx, 0, X.shape[1], None)[:3]

                    res = packed.map(grads).treeReduce(_add_grads)
                    bc.unpersist()
                    if res is None or not res[1]:
                        continue
                    loss, count, gs = res
                    gs = [gg / count for gg in gs]
                    if not all(np.all(np.isfinite(gg)) for gg in gs):
                        raise FloatingPointError(f"non-finite gradient in epoch {epoch}; lower "
                                                 "learningRate")
                    opt.step(flat, gs)
                    tot, cnt = tot + loss, cnt + count
                history.append(tot / cnt if cnt else float("nan"))
        finally:
            packed.unpersist()
        rnn = _flat_to_params(flat[:-2], L, 1, True, np.dtype("float64"))
        model = Model(rnn, pre=[Scale.normalize(mu[:-1], sd[:-1])],
                      post=[Dense(flat[-2].T.copy(), flat[-1].copy()),
                            Scale.unscale(mu[-1:], sd[-1:])],
                      inputs=list(inputs), targets=[label], batch_first=True,
                      description="daskgru.spark.GRUEstimator")
        out = GRUModel(model=model, idCol=id_col, timeCol=time_col, inputCols=list(inputs),
                       predictionCol=g("predictionCol"), skipNA=skipna,
                       maxStepsPerTask=g("maxStepsPerTask"), numBuckets=g("numBuckets"))
        out.history = history
        return out


def _pack_schema(df, id_col):
    id_type = df.schema[id_col].dataType.simpleString()
    return f"id {id_type}, piece int, n int, x array<double>, y array<double>"


def _add_grads(a, b):
    if a is None or b is None:
        return b if a is None else a
    return (a[0] + b[0], a[1] + b[1], [x + y for x, y in zip(a[2], b[2])])


class GRUModel(_SparkModel, _TableParams, HasPredictionCol, _Persist):
    """A trained daskgru model as a Spark Transformer: ``transform`` adds
    ``predictionCol`` (a number per row) from the model run along each series."""

    def __init__(self, *, model=None, idCol="id", timeCol="time", inputCols=None,
                 predictionCol="prediction", maxStepsPerTask=0, numBuckets=0, skipNA=False):
        super().__init__()
        self._init(dict(idCol="id", timeCol="time", predictionCol="prediction",
                        maxStepsPerTask=0, numBuckets=0, skipNA=False),
                   dict(model=model, idCol=idCol, timeCol=timeCol, inputCols=inputCols,
                        predictionCol=predictionCol, maxStepsPerTask=maxStepsPerTask,
                        numBuckets=numBuckets, skipNA=skipNA))
        self.history = []

    @property
    def daskgru_model(self):
        """The trained :class:`daskgru.Model` (save it, run it with apply_rnn or the
        command)."""
        return self.getOrDefault("model")

    def _transform(self, df):
        m = _as_model(self.getOrDefault("model"))
        id_col, time_col = self.getOrDefault("idCol"), self.getOrDefault("timeCol")
        inputs = self.getOrDefault("inputCols")
        _check_table(df, id_col, time_col, inputs, new=[self.getOrDefault("predictionCol")])
        _check_rows(df, id_col, time_col)
        return _run_groups(df, m, id_col, time_col, inputs, self.getOrDefault("predictionCol"),
                           self.getOrDefault("maxStepsPerTask"), self.getOrDefault("skipNA"),
                           scalar=m.output_size == 1, buckets=self.getOrDefault("numBuckets"))
