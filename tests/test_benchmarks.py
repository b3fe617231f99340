"""The asv suite cannot rot: every benchmark runs once on tiny sizes, and `asv check` passes.
Nothing here is timed."""
import importlib
import importlib.util
import inspect
import itertools
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_cases():
    sys.path.insert(0, str(BENCH))
    os.environ["DASKGRU_ASV_TINY"] = "1"
    import benchmarks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"benchmarks.{mod.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            methods = [m for m in dir(cls) if m.startswith(("time_", "peakmem_", "mem_", "track_"))]
            if not methods:
                continue
            params = getattr(cls, "params", [])
            if params and not isinstance(params[0], (list, tuple)):
                params = [params]
            combos = list(itertools.product(*params)) if params else [()]
            yield pytest.param(cls, methods, combos, id=f"{mod.name}.{name}")


@pytest.mark.parametrize("cls, methods, combos", list(benchmark_cases()))
def test_every_benchmark_runs_on_tiny_sizes(cls, methods, combos):
    for args in combos:
        bench = cls()
        if hasattr(bench, "setup"):
            try:
                bench.setup(*args)
            except NotImplementedError:  # asv's way of skipping a case (an engine not installed)
                continue
        try:
            for m in methods:
                getattr(bench, m)(*args)
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*args)


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv not installed")
def test_asv_check():
    env = dict(os.environ, DASKGRU_ASV_TINY="1")
    res = subprocess.run(["asv", "check", "--environment", "existing:python"], cwd=BENCH,
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compare_script_runs_quick():
    res = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "torch" in res.stdout


def test_compare_isolated_contender_times_itself_alone():
    """compare.py --isolate runs each contender as ``--one NAME THREADS T,B,I,H``: a
    process that prints its median seconds (and refuses a contender it does not know)."""
    for name in ("daskgru", "torch"):
        res = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--one", name, "1",
                              "16,2,3,4", "--repeats", "2"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert 0 < float(res.stdout.split()[-1]) < 10
    res = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--one", "nosuch", "1",
                          "16,2,3,4"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "nosuch" in res.stderr


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_scaling_pieces_run_tiny():
    """The scaling simulation calls task functions of daskgru.parallel_time directly: it must
    follow their signatures (it once broke silently when they changed)."""
    sim = _script("simulate_scaling")
    costs = sim.measure(4, 8, 300, 16)
    assert set(costs) == {"proj", "scan", "spec", "eval", "fix"}
    deps = sim.graph("speculative", 400, 4, 4, 2)
    end, critical, total = sim.simulate(deps, lambda k: 0.0, 2, 1e-3)
    assert 0 < critical <= end <= total


def test_bench_tiles_runs_tiny(capsys):
    _script("bench_tiles").main(["--shape", "13", "5", "40", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.count("bits of the plain order: True") == 2


def test_tables_script_runs_tiny(capsys):
    pytest.importorskip("pyarrow")
    _script("tables").main(["--series", "4", "--steps", "30", "--repeats", "1", "--no-spark",
                            "--no-cluster"])
    out = capsys.readouterr().out
    assert "apply_frame dask threads, by time" in out and "M rows/s" in out


@pytest.mark.slow
def test_fit_out_of_core_script_runs_tiny(capsys):
    assert _script("fit_out_of_core").main(
        ["--sequences", "16", "--steps", "20", "--features", "4", "--chunk", "4",
         "--batch", "8", "--limit-mb", "2000"]) == 0
    assert "client peak growth" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino", "jax"])
def test_the_engines_of_compare_py_compute_our_gru(engine):
    """compare.py --engines times ONNX Runtime, OpenVINO and JAX on the GRU's weights: each
    must compute the same GRU (an oracle nobody here wrote, for the ONNX GRU operator's gate
    order and linear_before_reset), or the comparison would be of different work."""
    import numpy as np

    import daskgru as dg

    pytest.importorskip("onnx" if engine != "jax" else "jax")
    pytest.importorskip(engine)
    sys.path.insert(0, str(BENCH))
    import engines

    p = dg.GRUParams.random(5, 12, seed=3)
    x = np.random.default_rng(3).standard_normal((40, 3, 5)).astype("float32")
    want = dg.gru(x, p)[0]
    f = engines.RUNNERS[engine](p, x, 1)
    assert engines.check(engine, f(), want) < 1e-5
    with pytest.raises(AssertionError, match="same GRU"):
        engines.check(engine, f() + 1e-3, want)


def test_machine_memory_probe_runs_tiny():
    # the first-touch probe and the warm-up the dask-path benchmark uses (values not checked:
    # they are the machine's)
    machine = _script("machine")
    machine.warm_memory(1)
    machine.warm_memory(0)
    cost = machine.fresh_memory_cost(1, idle=(0.0,))
    assert list(cost) == [0.0] and cost[0] > 0
