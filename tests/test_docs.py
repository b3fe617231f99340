"""The documentation builds with warnings as errors (notebooks rendered, not executed)."""
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("numpydoc")
pytest.importorskip("pydata_sphinx_theme")

DOCS = pathlib.Path(__file__).parent.parent / "docs"


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for page in ("index", "api", "concepts", "variants", "cli", "clusters", "performance",
                 "architecture", "missing_data", "models", "tables",
                 "notebooks/quickstart", "notebooks/climate_field", "notebooks/distributed",
                 "notebooks/tables_and_spark"):
        assert (tmp_path / "html" / f"{page}.html").exists(), page
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("GRUParams", "LSTMParams", "Stack", "load_params", "gru", "lstm", "apply_gru",
                 "apply_rnn", "apply_frame", "gru_backward", "lstm_backward", "GRURegressor", "Model",
                 "load_model"):
        assert f'id="daskgru.{name}"' in api, name
