"""Long-format tables: pandas and dask DataFrames, partitioned by id or by time (Parquet as
Spark and Hive write it), against dg.gru on each series sorted by time, bit for bit."""
import numpy as np
import pandas as pd
import pytest

import daskgru as dg

dd = pytest.importorskip("dask.dataframe")
pytest.importorskip("pyarrow")


def long_table(rng, n_ids=7, F=3, shuffle=True):
    """Ragged series: each its own start and length; rows shuffled."""
    rows = []
    for i in range(n_ids):
        start, n = int(rng.integers(0, 20)), int(rng.integers(1, 40))
        for t in range(start, start + n):
            rows.append((f"s{i}", t, *rng.normal(size=F)))
    df = pd.DataFrame(rows, columns=["id", "t", *[f"f{k}" for k in range(F)]])
    return df.sample(frac=1, random_state=0).reset_index(drop=True) if shuffle else df


def per_series(df, p, cols=("f0", "f1", "f2")):
    """{id: output of dg.gru/lstm/model on the series sorted by time}."""
    out = {}
    for sid, g in df.groupby("id"):
        g = g.sort_values("t")
        x = g[list(cols)].to_numpy()[:, None, :]
        if isinstance(p, dg.Model):
            out[sid] = (g.index.to_numpy(), p(x, batch_first=False)[:, 0])
        else:
            out[sid] = (g.index.to_numpy(), (dg.gru if isinstance(p, dg.GRUParams)
                                              else dg.lstm)(x, p)[0][:, 0])
    return out


def check(res, df, p, names):
    assert list(res.columns) == list(df.columns) + names
    pd.testing.assert_frame_equal(res[list(df.columns)], df)
    for sid, (index, want) in per_series(df, p).items():
        assert np.array_equal(res.loc[index, names].to_numpy(), want), sid


@pytest.mark.parametrize("kind", ["gru", "lstm", "model"])
def test_pandas_rows_in_any_order_ragged_series(rng, kind):
    df = long_table(rng)
    if kind == "gru":
        p = dg.GRUParams.random(3, 4, num_layers=2, bidirectional=True, seed=1, dtype="float64")
        names = [f"h{k}" for k in range(8)]
    elif kind == "lstm":
        p = dg.LSTMParams.random(3, 4, seed=2, dtype="float64")
        names = [f"h{k}" for k in range(4)]
    else:
        from daskgru.layers import Dense

        p = dg.Model(dg.GRUParams.random(3, 4, seed=3, dtype="float64"),
                     post=[Dense(np.ones((4, 2)), np.zeros(2), "tanh")], targets=["q", "et"])
        names = ["prediction_q", "prediction_et"]
    res = dg.apply_frame(df, p, id_col="id", time_col="t")
    check(res, df, p, names)


@pytest.mark.parametrize("layout", ["id", "time"])
@pytest.mark.parametrize("detect", [False, True])
def test_dask_partitioned_by_id_or_time(rng, layout, detect):
    df = long_table(rng, n_ids=9, shuffle=False)
    p = dg.GRUParams.random(3, 5, num_layers=2, seed=4, dtype="float64")
    if layout == "id":  # whole series, three partitions of three ids
        groups = [df[df.id.isin([f"s{i}" for i in range(k, k + 3)])] for k in (0, 3, 6)]
        df = pd.concat(groups)
        ddf = dd.concat([dd.from_pandas(g, npartitions=1, sort=False) for g in groups])
    else:  # time slices of all series, rows within a slice in any order
        df = df.sort_values("t", kind="stable").reset_index(drop=True)
        bounds = [0, 8, 15, 27, 100]
        parts = [df[(df.t >= a) & (df.t < b)].sample(frac=1, random_state=1)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        df = pd.concat(parts)
        ddf = dd.concat([dd.from_pandas(x, npartitions=1, sort=False) for x in parts])
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t",
                         partitioned_by=None if detect else layout)
    assert res.npartitions == ddf.npartitions
    out = res.compute()
    check(out, ddf.compute(), p, [f"h{k}" for k in range(5)])  # dask's own string dtype


def test_time_chain_refuses_rows_out_of_order(rng):
    df = long_table(rng, n_ids=3, shuffle=False)
    first, late = df[df.t < 15], df[df.t >= 15]
    # a later time slice before an earlier one
    ddf = dd.concat([dd.from_pandas(late, npartitions=1), dd.from_pandas(first, npartitions=1)])
    p = dg.GRUParams.random(3, 2, seed=0)
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t", partitioned_by="time")
    with pytest.raises(ValueError, match="split over partitions out of time order"):
        res.compute()


def test_parquet_partitioned_by_day_as_spark_writes_it(rng, tmp_path):
    df = long_table(rng, n_ids=6, shuffle=False)
    df["day"] = df.t // 10
    df.to_parquet(tmp_path / "table", partition_cols=["day"])
    ddf = dd.read_parquet(tmp_path / "table")
    p = dg.LSTMParams.random(3, 3, seed=5, dtype="float64")
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t", feature_cols=["f0", "f1", "f2"])
    out = res.compute().reset_index(drop=True)
    ref = dg.apply_frame(out[list(ddf.columns)], p, id_col="id", time_col="t",
                         feature_cols=["f0", "f1", "f2"])
    np.testing.assert_array_equal(out[["h0", "h1", "h2"]].to_numpy(),
                                  ref[["h0", "h1", "h2"]].to_numpy())


def test_skipna_rows(rng):
    df = long_table(rng, n_ids=3)
    df.loc[df.index[:5], "f1"] = np.nan
    p = dg.GRUParams.random(3, 2, seed=6, dtype="float64")
    res = dg.apply_frame(df, p, id_col="id", time_col="t", skipna=True)
    missing = df.f1.isna()
    assert res.loc[missing, ["h0", "h1"]].isna().all().all()
    assert res.loc[~missing, ["h0", "h1"]].notna().all().all()
    for sid, g in res.groupby("id"):  # the state carries across the missing rows
        g = g.sort_values("t")
        x = g[["f0", "f1", "f2"]].to_numpy()[:, None]
        valid = ~np.isnan(x).any(axis=-1)
        want = dg.gru(np.where(valid[..., None], x, 0), p, mask=valid)[0][:, 0]
        want[~valid[:, 0]] = np.nan
        np.testing.assert_array_equal(g[["h0", "h1"]].to_numpy(), want)


@pytest.mark.parametrize("change,exc,match", [
    (dict(id_col="station"), ValueError, "id_col 'station' is not a column"),
    (dict(feature_cols=["f0", "f9", "f2"]), ValueError, r"feature columns \['f9'\]"),
    (dict(feature_cols=["f0", "name", "f2"]), TypeError, r"\['name'\] are not numeric"),
    (dict(feature_cols=["f0", "f1"]), ValueError, "2 feature columns"),
])
def test_bad_tables_are_refused_naming_the_column(rng, change, exc, match):
    df = long_table(rng, n_ids=2)
    df["name"] = "x"
    p = dg.GRUParams.random(3, 2, seed=0)
    kw = {**dict(id_col="id", time_col="t", feature_cols=["f0", "f1", "f2"]), **change}
    with pytest.raises(exc, match=match):
        dg.apply_frame(df, p, **kw)


def test_duplicates_and_missing_times(rng):
    df = long_table(rng, n_ids=2)
    p = dg.GRUParams.random(3, 2, seed=0)
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(ValueError, match=r"duplicate \(id, t\) rows"):
        dg.apply_frame(dup, p, id_col="id", time_col="t")
    nat = df.astype({"t": float})
    nat.loc[nat.index[0], "t"] = np.nan
    with pytest.raises(ValueError, match="time column 't' holds missing values"):
        dg.apply_frame(nat, p, id_col="id", time_col="t")


def test_time_slices_out_of_order_and_ids_missing_from_some(rng, tmp_path):
    """Time slices that come out of time order are chained in time order (detected); ids
    that appear in some slices only keep their state across the ones they miss."""
    df = long_table(rng, n_ids=5, shuffle=False)
    df["day"] = df.t // 4
    df = df[~((df.id == "s1") & (df.day == 3))]  # s1 skips a slice...
    df = df[~((df.id == "s2") & (df.day >= 2) & (df.day <= 5))]  # ...s2 several
    df.to_parquet(tmp_path / "table", partition_cols=["day"])
    read = dd.read_parquet(tmp_path / "table")
    parts = read.to_delayed()
    order = np.random.default_rng(1).permutation(len(parts))
    ddf = dd.from_delayed([parts[k] for k in order], meta=read._meta)
    p = dg.GRUParams.random(3, 4, seed=7, dtype="float64")
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t", feature_cols=["f0", "f1", "f2"])
    assert res.npartitions == ddf.npartitions
    out = res.compute()
    assert len(out) == len(df)
    for sid, g in out.groupby("id"):
        g = g.sort_values("t")
        want = dg.gru(g[["f0", "f1", "f2"]].to_numpy()[:, None], p)[0][:, 0]
        np.testing.assert_array_equal(g[["h0", "h1", "h2", "h3"]].to_numpy(), want)
    # said to be time slices in the order they come: the chain sees a later slice first
    wrong = dg.apply_frame(ddf, p, id_col="id", time_col="t", feature_cols=["f0", "f1", "f2"],
                           partitioned_by="time")
    with pytest.raises(ValueError, match="out of time order"):
        wrong.compute()
    # the Parquet dataset as read: in time order already
    direct = dg.apply_frame(read, p, id_col="id", time_col="t", feature_cols=["f0", "f1", "f2"],
                            partitioned_by="time").compute()
    pd.testing.assert_frame_equal(direct.sort_values(["id", "t"]), out.sort_values(["id", "t"]))


def test_said_by_id_but_an_id_spans_partitions(rng):
    df = long_table(rng, n_ids=4, shuffle=False)
    ddf = dd.from_pandas(df, npartitions=3, sort=False)  # cuts through some series
    p = dg.GRUParams.random(3, 2, seed=0)
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t", partitioned_by="id")
    with pytest.raises(ValueError, match="has rows in several partitions"):
        res.compute()


def test_time_index_and_known_divisions(rng):
    df = long_table(rng, n_ids=4, shuffle=False).sort_values("t").set_index("t")
    ddf = dd.from_pandas(df, npartitions=3, sort=True)
    assert ddf.known_divisions
    p = dg.GRUParams.random(3, 3, seed=8, dtype="float64")
    res = dg.apply_frame(ddf, p, id_col="id", time_col="t")
    assert res.divisions == ddf.divisions
    out = res.compute()
    ref = dg.apply_frame(ddf.compute(), p, id_col="id", time_col="t")
    pd.testing.assert_frame_equal(out, ref)


def test_pandas_model_with_input_names_and_float32(rng):
    from daskgru.layers import Dense

    df = long_table(rng, n_ids=3).astype({"f0": "float32", "f1": "float32", "f2": "float32"})
    m = dg.Model(dg.GRUParams.random(3, 4, seed=9), post=[Dense(np.ones((4, 1), "float32"),
                                                                np.zeros(1, "float32"))],
                 inputs=["f2", "f0", "f1"])
    res = dg.apply_frame(df, m, id_col="id", time_col="t", return_hidden=True)
    assert res["prediction_0"].dtype == np.float32
    assert [c for c in res.columns if c not in df.columns] == ["prediction_0", "h0", "h1",
                                                               "h2", "h3"]
    for sid, g in res.groupby("id"):
        g = g.sort_values("t")
        x = g[["f2", "f0", "f1"]].to_numpy()[:, None]
        np.testing.assert_array_equal(g.prediction_0.to_numpy(), m(x)[:, 0, 0])


def test_empty_tables_and_empty_partitions(rng):
    df = long_table(rng, n_ids=4, shuffle=False)
    p = dg.GRUParams.random(3, 2, seed=0, dtype="float64")
    empty = dg.apply_frame(df.iloc[:0], p, id_col="id", time_col="t")
    assert list(empty.columns) == list(df.columns) + ["h0", "h1"] and len(empty) == 0
    ref = dg.apply_frame(df, p, id_col="id", time_col="t")
    for layout in ("time", "id"):
        if layout == "time":
            parts = [df[df.t < 10], df.iloc[:0], df[df.t >= 10], df.iloc[:0]]
        else:
            parts = [df[df.id.isin(["s0", "s1"])], df.iloc[:0], df[df.id.isin(["s2", "s3"])]]
        ddf = dd.concat([dd.from_pandas(x, npartitions=1, sort=False) for x in parts])
        for said in (layout, None):
            out = dg.apply_frame(ddf, p, id_col="id", time_col="t",
                                 partitioned_by=said).compute()
            np.testing.assert_array_equal(out.sort_values(["id", "t"])[["h0", "h1"]].to_numpy(),
                                          ref.sort_values(["id", "t"])[["h0", "h1"]].to_numpy())


def test_one_partition_is_whole_series_bidirectional_and_windowed(rng):
    from daskgru.layers import Dense

    df = long_table(rng, n_ids=3)
    ddf = dd.from_pandas(df, npartitions=1)
    bi = dg.GRUParams.random(3, 2, bidirectional=True, seed=1, dtype="float64")
    out = dg.apply_frame(ddf, bi, id_col="id", time_col="t").compute()
    pd.testing.assert_frame_equal(out, dg.apply_frame(ddf.compute(), bi, id_col="id",
                                                      time_col="t"))
    m = dg.Model(dg.GRUParams.random(3, 2, seed=2, dtype="float64"),
                 post=[Dense(np.ones((2, 1)), np.zeros(1))], window=4)
    res = dg.apply_frame(df, m, id_col="id", time_col="t")
    for sid, g in res.groupby("id"):
        g = g.sort_values("t")
        x = g[["f0", "f1", "f2"]].to_numpy()[:, None]
        np.testing.assert_array_equal(g.prediction_0.to_numpy(),
                                      m.windowed(x, 4, batch_first=False)[:, 0, 0])
    with pytest.raises(ValueError, match="return_hidden with windowed inference"):
        dg.apply_frame(df, m, id_col="id", time_col="t", return_hidden=True)


def test_ordered_categorical_time_and_mixed_ids(rng):
    months = ["Jan", "Feb", "Mar", "Apr", "May"]
    df = pd.DataFrame({"id": ["a"] * 5 + ["b"] * 3,
                       "month": pd.Categorical(months + months[2:], categories=months,
                                               ordered=True),
                       "x": rng.normal(size=8)}).sample(frac=1, random_state=0)
    p = dg.GRUParams.random(1, 2, seed=3, dtype="float64")
    res = dg.apply_frame(df, p, id_col="id", time_col="month")
    a = res[res.id == "a"].sort_values("month")  # sorts by the categories' order
    assert list(a.month) == months
    np.testing.assert_array_equal(a[["h0", "h1"]].to_numpy(),
                                  dg.gru(a[["x"]].to_numpy()[:, None], p)[0][:, 0])
    mixed = pd.DataFrame({"id": np.array([1, "b", 1, "b"], dtype=object), "t": [0, 0, 1, 1],
                          "x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match="id column 'id' or time column 't' do not sort"):
        dg.apply_frame(mixed, p, id_col="id", time_col="t")
