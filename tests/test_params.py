"""GRUParams: construction, properties, casting, equality, xarray/netCDF/zarr I/O, torch names."""
import os

import numpy as np
import pytest
import xarray as xr

import daskgru as dg
from daskgru.params import GRUWeights

pytestmark = [pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3"),
              pytest.mark.filterwarnings("ignore:Consolidated metadata")]
F32, F64 = np.dtype("float32"), np.dtype("float64")
VARIANTS = [dict(), dict(num_layers=3, bidirectional=True), dict(num_layers=2, bias=False),
            dict(reset_after=False, bidirectional=True, dtype="float64")]


def arrays(p):
    return [a for layer in p.weights for w in layer for a in w]


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_shapes_and_properties(L, bidirectional, bias, dtype):
    I, H, D = 3, 5, 1 + bidirectional
    p = dg.GRUParams.random(I, H, num_layers=L, bidirectional=bidirectional, bias=bias,
                            reset_after=False, dtype=dtype, seed=0)
    assert (p.input_size, p.hidden_size, p.num_layers, p.num_directions, p.bidirectional,
            p.reset_after, p.bias, p.dtype, p.output_size) == (
        I, H, L, D, bidirectional, False, bias, np.dtype(dtype), D * H)
    assert len(p.weights) == L and all(len(layer) == D for layer in p.weights)
    for l, layer in enumerate(p.weights):
        for w in layer:
            assert isinstance(w, GRUWeights)
            assert [a.shape for a in w] == [(3 * H, I if l == 0 else D * H), (3 * H, H),
                                            (3 * H,), (3 * H,)]
            assert all(a.dtype == np.dtype(dtype) and a.flags.c_contiguous for a in w)
            assert np.all(np.abs(np.concatenate([a.ravel() for a in w])) <= 1 / np.sqrt(H))
            assert np.any(w.b_ih) == bias and np.any(w.b_hh) == bias
    assert repr(p).startswith(f"GRUParams(input_size={I}, hidden_size={H}, num_layers={L}")


def test_random_seed_determinism():
    a, b = (dg.GRUParams.random(3, 4, num_layers=2, seed=7) for _ in range(2))
    assert a == b and all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b)))
    assert a != dg.GRUParams.random(3, 4, num_layers=2, seed=8)
    assert dg.GRUParams.random(3, 4, seed=None) != dg.GRUParams.random(3, 4, seed=None)
    # float64 draws are the float32 draws before rounding
    c = dg.GRUParams.random(3, 4, num_layers=2, seed=7, dtype="float64")
    assert c.astype("float32") == a


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_astype(kwargs):
    p = dg.GRUParams.random(3, 4, seed=1, **kwargs)
    other = F64 if p.dtype == F32 else F32
    q = p.astype(other)
    assert q.dtype == other and p.dtype != other  # p itself unchanged
    assert (q.num_layers, q.bidirectional, q.reset_after, q.bias) == (
        p.num_layers, p.bidirectional, p.reset_after, p.bias)
    assert all(np.array_equal(a.astype(other), b) for a, b in zip(arrays(p), arrays(q)))
    assert p.astype(p.dtype) is p
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        p.astype("int32")


def test_equality():
    p = dg.GRUParams.random(3, 4, num_layers=2, bidirectional=True, seed=2)
    assert p == dg.GRUParams(p.weights, reset_after=True, bias=True)
    changed = [[list(w) for w in layer] for layer in p.weights]
    changed[1][1][2] = changed[1][1][2].copy()
    changed[1][1][2][-1] += 1e-6
    assert p != dg.GRUParams(changed)
    assert p != dg.GRUParams(p.weights, reset_after=False)
    assert p != p.astype("float64")
    assert p != dg.GRUParams.random(3, 4, num_layers=1, bidirectional=True, seed=2)
    assert p != dg.GRUParams.random(3, 5, num_layers=2, bidirectional=True, seed=2)
    assert p != "not params" and p != p.weights
    with pytest.raises(TypeError):
        hash(p)


def test_params_are_read_only_snapshots_and_prepare_is_kept():
    # the kernels' transposed weights are built once per params and numerics setting; that
    # is safe because nothing can write to the params' arrays: the caller's arrays are
    # copied, and the params' own are read-only (a write raises instead of leaving the kept
    # transposes stale)
    w = dg.GRUParams.random(3, 4, seed=5).weights[0][0]
    mine = GRUWeights(*[a.copy() for a in w])
    p = dg.GRUParams([[mine]])
    x = np.random.default_rng(0).normal(size=(7, 2, 3)).astype("float32")
    before = dg.gru(x, p)[0]
    assert not any(np.shares_memory(a, b) for a, b in zip(mine, p.weights[0][0]))
    mine.w_hh[...] = 0  # the caller's array: not the params'
    np.testing.assert_array_equal(dg.gru(x, p)[0], before)
    np.testing.assert_array_equal(dg.gru(x, dg.GRUParams([[w]]))[0], before)
    assert not any(a.flags.writeable for a in arrays(p))
    with pytest.raises(ValueError, match="read-only"):
        p.weights[0][0].b_ih[0] += 1.0
    with pytest.raises(ValueError):  # nor can writes be turned back on
        p.weights[0][0].b_ih.setflags(write=True)
    # a read-only array the caller can still write through (an older writable view) is
    # copied too
    own = w.w_hh.copy()
    view = own.view()
    own.setflags(write=False)
    q = dg.GRUParams([[w._replace(w_hh=own)]])
    assert not np.shares_memory(q.weights[0][0].w_hh, view)
    assert dg.GRUParams(p.weights).weights[0][0].w_hh is p.weights[0][0].w_hh  # no copy
    # prepared once per setting; every call a fresh holder over the same weights
    a, b = p.prepare(True), p.prepare(True)
    assert a is not b and a.weights is b.weights and p.prepare(False).weights is not a.weights
    assert all(arr.flags.writeable and arr.flags.c_contiguous for arr in a.weights[0][0][:6])
    np.testing.assert_array_equal(a.weights[0][0].w_hh_t, p.weights[0][0].w_hh.T)
    # a pickled copy does not carry them, and its arrays are read-only again
    import pickle

    q = pickle.loads(pickle.dumps(p))
    assert q == p and not q._prepared and not any(a.flags.writeable for a in arrays(q))
    np.testing.assert_array_equal(dg.gru(x, q)[0], before)
    # pickle protocol 5 with out-of-band buffers: the copy does not share the caller's
    buffers = []
    data = pickle.dumps(p, protocol=5, buffer_callback=buffers.append)
    held = [bytearray(b.raw()) for b in buffers]
    q = pickle.loads(data, buffers=held)
    assert held and q == p and not any(a.flags.writeable for a in arrays(q))
    assert not any(np.shares_memory(a, np.frombuffer(b, np.uint8)) for a in arrays(q)
                   for b in held)
    q.prepare()
    state = q.__getstate__()  # what an older pickle without the kept weights gives back
    del state["_prepared"]
    r = object.__new__(type(q))
    r.__setstate__(state)
    np.testing.assert_array_equal(dg.gru(x, r)[0], before)


def test_dask_token():
    tokenize = pytest.importorskip("dask.base").tokenize
    p = dg.GRUParams.random(3, 4, num_layers=2, seed=3)
    assert tokenize(p) == tokenize(dg.GRUParams.random(3, 4, num_layers=2, seed=3))
    assert tokenize(p) != tokenize(dg.GRUParams.random(3, 4, num_layers=2, seed=4))
    assert tokenize(p) != tokenize(dg.GRUParams(p.weights, reset_after=False))


def test_constructor_infers_and_casts_dtype():
    w = dg.GRUParams.random(2, 3, seed=4, dtype="float64").weights
    assert dg.GRUParams(w).dtype == F64
    assert dg.GRUParams(w, dtype="float32").dtype == F32
    half = [[GRUWeights(*[a.astype("float16") for a in w[0][0]])]]
    assert dg.GRUParams(half).dtype == F32
    ints = [[GRUWeights(*[np.zeros(a.shape, int) for a in w[0][0]])]]
    assert dg.GRUParams(ints).dtype == F64


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_dataset_round_trip(kwargs):
    p = dg.GRUParams.random(3, 4, seed=5, **kwargs)
    ds = p.to_dataset()
    assert ds.attrs["num_layers"] == p.num_layers and ds.attrs["gate_order"] == "r z n"
    assert list(ds["direction"].values) == ["forward", "backward"][: p.num_directions]
    assert ds["w_ih_l0"].dims == ("direction", "gate", "hidden", "input_l0")
    # gate r of the forward layer 0 is rows 0..H-1 of torch's weight_ih_l0
    assert np.array_equal(ds["w_ih_l0"].sel(direction="forward", gate="z").values,
                          p.weights[0][0].w_ih[4:8])
    q = dg.GRUParams.from_dataset(ds)
    assert q == p and q.dtype == p.dtype
    with pytest.raises(ValueError, match="to_dataset"):
        dg.GRUParams.from_dataset(xr.Dataset())


@pytest.mark.parametrize("ext", [".nc", ".zarr"])
@pytest.mark.parametrize("kwargs", VARIANTS)
def test_save_load(tmp_path, ext, kwargs):
    pytest.importorskip("zarr" if ext == ".zarr" else "h5netcdf")
    p = dg.GRUParams.random(3, 4, seed=6, **kwargs)
    path = tmp_path / f"params{ext}"
    assert p.save(path) == str(path)
    q = dg.load_params(path)
    assert q == p and q.dtype == p.dtype
    assert all(np.array_equal(a, b) for a, b in zip(arrays(p), arrays(q)))
    assert os.listdir(tmp_path) == [path.name]  # no temporary left behind
    # overwriting replaces the whole thing
    p2 = dg.GRUParams.random(3, 4, seed=60, **kwargs)
    p2.save(str(path))
    assert dg.load_params(str(path)) == p2
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("ext", [".nc", ".zarr"])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, ext):
    """A write that fails half-way leaves neither the target nor a temporary behind, and an
    existing file under the target name is kept."""
    pytest.importorskip("zarr" if ext == ".zarr" else "h5netcdf")
    p = dg.GRUParams.random(3, 4, seed=7)
    method = "to_zarr" if ext == ".zarr" else "to_netcdf"
    real = getattr(xr.Dataset, method)

    def half_write(self, target, *args, **kwargs):
        real(self.drop_vars(["w_hh_l0"]), target, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, method, half_write)
    with pytest.raises(OSError, match="disk full"):
        p.save(tmp_path / f"new{ext}")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(xr.Dataset, method, real)
    old = dg.GRUParams.random(3, 4, seed=8)
    old.save(tmp_path / f"old{ext}")
    monkeypatch.setattr(xr.Dataset, method, half_write)
    with pytest.raises(OSError, match="disk full"):
        p.save(tmp_path / f"old{ext}")
    assert os.listdir(tmp_path) == [f"old{ext}"]
    assert dg.load_params(tmp_path / f"old{ext}") == old


@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_gru_cell(bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(3, 4, bias=bias)
    for obj in (cell, cell.state_dict(),
                {k: v.numpy() for k, v in cell.state_dict().items()}):
        p = dg.GRUParams.from_torch(obj)
        assert (p.input_size, p.hidden_size, p.num_layers, p.num_directions, p.bias,
                p.reset_after, p.dtype) == (3, 4, 1, 1, bias, True, F32)
        w = p.weights[0][0]
        assert np.array_equal(w.w_ih, cell.weight_ih.detach().numpy())
        assert np.array_equal(w.w_hh, cell.weight_hh.detach().numpy())
        assert np.array_equal(w.b_hh, cell.bias_hh.detach().numpy() if bias else np.zeros(12))


def test_from_torch_state_dict_without_biases():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, bias=False, dtype=torch.float64)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    assert not any(k.startswith("bias") for k in sd)
    p = dg.GRUParams.from_torch(sd)
    assert (p.num_layers, p.bidirectional, p.bias, p.dtype) == (2, True, False, F64)
    assert not any(np.any(w.b_ih) or np.any(w.b_hh) for layer in p.weights for w in layer)
    assert p.to_torch_state_dict().keys() == sd.keys()
    assert dg.GRUParams.from_torch(sd, dtype="float32").dtype == F32


def test_from_torch_parameters_directly():
    """Tensors that require grad are taken as they are (duck-typed, detached)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.GRU(3, 4, dtype=torch.float64)
    p = dg.GRUParams([[GRUWeights(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)]])
    assert p == dg.GRUParams.from_torch(m) and p.dtype == F64


def test_from_torch_refuses():
    with pytest.raises(ValueError, match="weight_ih_l0"):
        dg.GRUParams.from_torch({"foo": np.zeros(3)})
    with pytest.raises(TypeError, match="from_torch expects"):
        dg.GRUParams.from_torch(np.zeros(3))
    with pytest.raises(ValueError, match="reset_after"):
        dg.GRUParams.random(2, 3, reset_after=False).to_torch_state_dict()
