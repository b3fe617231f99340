"""The asv suite cannot rot: every benchmark runs once on tiny sizes, and `asv check` passes.
Nothing here is timed."""
import importlib
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
            bench.setup(*args)
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
