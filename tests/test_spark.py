"""daskgru.spark on local[2] Spark: the transformer against dg.gru per series (whole series
and in waves), persistence, refusals, and the estimator learning a lagged toy problem."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import daskgru as dg

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None:  # pragma: no cover
    pytest.skip("Spark needs Java (java on PATH)", allow_module_level=True)

from daskgru.spark import GRUEstimator, GRUModel, RNNTransformer  # noqa: E402

pytestmark = [
    pytest.mark.spark,
    # pyspark 4 warns about pandas 3 in general; what these tests use works (they check it)
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    s = (SparkSession.builder.master("local[2]").appName("daskgru-tests")
         .config("spark.sql.shuffle.partitions", "4")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.execution.arrow.pyspark.enabled", "true")
         .config("spark.driver.memory", "1g")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    s.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    yield s
    s.stop()


def table(rng, n_ids=5, F=2, dtype="float64", max_len=30):
    rows = []
    for i in range(n_ids):
        start, n = int(rng.integers(0, 10)), int(rng.integers(1, max_len))
        for t in range(start, start + n):
            rows.append((f"s{i}", t, *rng.normal(size=F).astype(dtype)))
    df = pd.DataFrame(rows, columns=["id", "t", *[f"f{k}" for k in range(F)]])
    return df.sample(frac=1, random_state=0).reset_index(drop=True)


def by_series(df, p, cols):
    """{(id, t): output row} from dg.gru / the model on each series sorted by time."""
    out = {}
    for sid, g in df.groupby("id"):
        g = g.sort_values("t")
        x = g[cols].to_numpy()[:, None, :]
        if isinstance(p, dg.Model):
            y = p(x, batch_first=False)[:, 0]
        else:
            y = (dg.gru if isinstance(p, dg.GRUParams) else dg.lstm)(x, p)[0][:, 0]
        for t, row in zip(g.t, y):
            out[(sid, t)] = row
    return out


@pytest.mark.parametrize("waves", [0, 7])
def test_transformer_equals_gru_per_series(spark, rng, waves):
    df = table(rng)
    p = dg.GRUParams.random(2, 4, num_layers=2, seed=1, dtype="float64")
    t = RNNTransformer(model=p, idCol="id", timeCol="t", inputCols=["f0", "f1"],
                       outputCol="h", maxStepsPerTask=waves)
    res = t.transform(spark.createDataFrame(df)).toPandas()
    assert len(res) == len(df)
    assert list(res.columns) == ["id", "t", "f0", "f1", "h"]
    want = by_series(df, p, ["f0", "f1"])
    for sid, tt, h in zip(res.id, res.t, res.h):
        np.testing.assert_array_equal(np.asarray(h), want[(sid, tt)])


def test_transformer_lstm_float32_in_waves(spark, rng):
    df = table(rng, dtype="float32", max_len=40)
    p = dg.LSTMParams.random(2, 3, seed=2)
    sdf = spark.createDataFrame(df.astype({"f0": "float32", "f1": "float32"}))
    res = RNNTransformer(model=p, idCol="id", timeCol="t", inputCols=["f0", "f1"],
                         outputCol="h", maxStepsPerTask=5).transform(sdf).toPandas()
    want = by_series(df.astype({"f0": "float32", "f1": "float32"}), p, ["f0", "f1"])
    got = np.stack([np.asarray(h) for h in res.h])
    assert got.dtype == np.float32
    for sid, tt, h in zip(res.id, res.t, got):
        np.testing.assert_array_equal(h, want[(sid, tt)])


def test_transformer_saves_and_loads(spark, rng, tmp_path):
    from daskgru.layers import Dense

    df = table(rng, n_ids=3)
    m = dg.Model(dg.GRUParams.random(2, 3, seed=3, dtype="float64"),
                 post=[Dense(np.ones((3, 2)), np.zeros(2), "tanh")])
    t = RNNTransformer(model=m, idCol="id", timeCol="t", inputCols=["f0", "f1"],
                       outputCol="pred", maxStepsPerTask=4)
    t.write().overwrite().save(str(tmp_path / "t"))
    back = RNNTransformer.load(str(tmp_path / "t"))
    assert back.getOrDefault("maxStepsPerTask") == 4
    assert back.getOrDefault("model") == m
    sdf = spark.createDataFrame(df)
    a = t.transform(sdf).toPandas().sort_values(["id", "t"])
    b = back.transform(sdf).toPandas().sort_values(["id", "t"])
    np.testing.assert_array_equal(np.stack(a.pred), np.stack(b.pred))


def test_transformer_windowed_model_and_a_column_named_like_its_scratch(spark, rng):
    from daskgru.layers import Dense

    df = table(rng, n_ids=3)
    df["o0"] = 1.5  # a user column with a short name survives
    m = dg.Model(dg.GRUParams.random(2, 3, seed=5, dtype="float64"),
                 post=[Dense(np.ones((3, 1)), np.zeros(1))], window=6)
    res = RNNTransformer(model=m, idCol="id", timeCol="t", inputCols=["f0", "f1"],
                         outputCol="pred").transform(spark.createDataFrame(df)).toPandas()
    assert (res.o0 == 1.5).all()
    want = dg.apply_frame(df, m, id_col="id", time_col="t", feature_cols=["f0", "f1"])
    res, want = res.sort_values(["id", "t"]), want.sort_values(["id", "t"])
    np.testing.assert_array_equal(np.stack(res.pred)[:, 0], want.prediction_0.to_numpy())
    with pytest.raises(ValueError, match="maxStepsPerTask must be 0"):
        RNNTransformer(model=m, idCol="id", timeCol="t", inputCols=["f0", "f1"],
                       outputCol="pred", maxStepsPerTask=5).transform(spark.createDataFrame(df))


def test_estimator_refuses_gappy_inputs_without_skipna(spark, rng):
    df = table(rng, n_ids=3)
    df["y"] = 1.0
    df.loc[df.index[0], "f1"] = np.nan
    est = GRUEstimator(idCol="id", timeCol="t", inputCols=["f0", "f1"], labelCol="y",
                       maxEpochs=1)
    with pytest.raises(ValueError, match=r"input columns \['f1'\] hold null or NaN"):
        est.fit(spark.createDataFrame(df))
    df["y"] = np.nan
    with pytest.raises(ValueError, match=r"columns \['y'\] have no values"):
        est.fit(spark.createDataFrame(df))


@pytest.mark.parametrize("change,exc,match", [
    (dict(idCol="station"), ValueError, "idCol 'station' is not a column"),
    (dict(inputCols=["f0", "nope"]), ValueError, r"inputCols \['nope'\]"),
    (dict(inputCols=["f0", "name"]), TypeError, r"\['name'\] are not numeric"),
    (dict(inputCols=["f0"]), ValueError, "1 inputCols"),
    (dict(outputCol="f1"), ValueError, "output column 'f1' is already a column"),
])
def test_transformer_refuses_bad_tables(spark, rng, change, exc, match):
    df = table(rng, n_ids=2)
    df["name"] = "x"
    kw = dict(model=dg.GRUParams.random(2, 2, seed=0), idCol="id", timeCol="t",
              inputCols=["f0", "f1"], outputCol="h")
    kw.update(change)
    with pytest.raises(exc, match=match):
        RNNTransformer(**kw).transform(spark.createDataFrame(df))


def test_transformer_refuses_duplicate_rows(spark, rng):
    df = table(rng, n_ids=2)
    df = pd.concat([df, df.iloc[:1]])
    t = RNNTransformer(model=dg.GRUParams.random(2, 2, seed=0), idCol="id", timeCol="t",
                       inputCols=["f0", "f1"], outputCol="h")
    with pytest.raises(ValueError, match=r"duplicate \(id, t\) rows"):
        t.transform(spark.createDataFrame(df))


@pytest.mark.slow
def test_estimator_learns_a_lag_and_persists(spark, tmp_path):
    """y_t = x_{t-2} on 24 series of 60 steps: R² > 0.9 on held-out series."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        x = rng.normal(size=62)
        for t in range(60):
            rows.append((i, t, float(x[t + 2]), float(x[t])))
    df = pd.DataFrame(rows, columns=["id", "t", "x", "y"])
    train, test = df[df.id < 24], df[df.id >= 24]
    est = GRUEstimator(idCol="id", timeCol="t", inputCols=["x"], labelCol="y", hiddenSize=12,
                       maxEpochs=25, learningRate=0.03, batchSize=6, seed=1)
    model = est.fit(spark.createDataFrame(train).repartition(2))
    assert isinstance(model, GRUModel)
    assert model.history[-1] < model.history[0]
    pred = model.transform(spark.createDataFrame(test)).toPandas().sort_values(["id", "t"])
    ok = pred.t >= 2  # the first two steps cannot know their label
    y, yhat = pred.y[ok].to_numpy(), pred.prediction[ok].to_numpy()
    r2 = 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.9, r2
    # the model is a daskgru Model: the same predictions through apply_frame
    local = dg.apply_frame(test, model.daskgru_model, id_col="id", time_col="t")
    local = local.sort_values(["id", "t"])
    np.testing.assert_allclose(local.prediction_y.to_numpy(), pred.prediction.to_numpy(),
                               rtol=1e-12, atol=1e-12)
    model.write().overwrite().save(str(tmp_path / "m"))
    back = GRUModel.load(str(tmp_path / "m"))
    again = back.transform(spark.createDataFrame(test)).toPandas().sort_values(["id", "t"])
    np.testing.assert_array_equal(again.prediction.to_numpy(), pred.prediction.to_numpy())
    assert os.path.isdir(tmp_path / "m" / "data")
