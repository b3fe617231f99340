"""The CPU inference engines a user might pick instead of daskgru, each running the same GRU.

* ONNX Runtime and OpenVINO run one ONNX model holding the ONNX ``GRU`` operator, built here
  from a :class:`daskgru.GRUParams` with ``onnx.helper`` (gates reordered from torch's
  r, z, n to ONNX's z, r, h; ``linear_before_reset=1``, which is torch's reset-after form;
  W and R biases kept apart). OpenVINO is forced to float32 (``INFERENCE_PRECISION_HINT``),
  so that it does not trade precision for speed behind the user's back.
* JAX runs the GRU's step in ``jax.lax.scan`` under ``jax.jit`` (the input projection as
  one product over all steps first, as a JAX user would write it).

Every runner returns a function ``f()`` that runs the model on its input and returns the
output (T, B, H) as NumPy, for :func:`check` to compare against daskgru. Thread counts:
ONNX Runtime's and OpenVINO's own settings; JAX sizes its thread pool once per process
(:func:`start_jax`, before any pinning: all CPUs) and then follows the process's CPU
affinity, which ``compare.py --engines`` pins to the thread count for every contender alike.
"""
from __future__ import annotations

import numpy as np

ENGINES = ("onnxruntime", "openvino", "jax")


def available():
    """The engines importable here."""
    import importlib.util

    have = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"),
            "jax": ("jax",)}
    return [e for e in ENGINES
            if all(importlib.util.find_spec(m) is not None for m in have[e])]


def onnx_gru(p, T, B) -> bytes:
    """An ONNX model ``X (T, B, I) -> Y (T, 1, B, H)`` with one forward GRU layer of ``p``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if p.num_layers != 1 or p.bidirectional or not p.reset_after:
        raise ValueError("onnx_gru builds one forward reset-after (torch) layer")
    w = p.weights[0][0]
    H, I = p.hidden_size, p.input_size
    dt = np.dtype(w.w_ih.dtype)
    elem = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE}[dt]

    def zrh(a):  # torch's gate blocks r, z, n -> ONNX's z, r, h
        r, z, n = np.split(a, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    W = zrh(w.w_ih)[None]
    R = zrh(w.w_hh)[None]
    Bias = np.concatenate([zrh(w.b_ih), zrh(w.b_hh)])[None]
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                            linear_before_reset=1)
    graph = helper.make_graph(
        [node], "gru",
        [helper.make_tensor_value_info("X", elem, [T, B, I])],
        [helper.make_tensor_value_info("Y", elem, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", elem, [1, B, H])],
        initializer=[numpy_helper.from_array(a.astype(dt), n)
                     for a, n in ((W, "W"), (R, "R"), (Bias, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnxruntime_runner(p, x, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_gru(p, *x.shape[:2]), so,
                                providers=["CPUExecutionProvider"])
    feed = {"X": x}
    return lambda: sess.run(["Y"], feed)[0][:, 0]


def openvino_runner(p, x, threads):
    import os
    import tempfile

    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gru.onnx")
        with open(path, "wb") as f:
            f.write(onnx_gru(p, *x.shape[:2]))
        model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    req = compiled.create_infer_request()
    out = compiled.outputs[0]
    return lambda: req.infer({0: x})[out][:, 0]


def jax_runner(p, x, threads):
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]  # never an accelerator (its float32 products may round less)
    w = p.weights[0][0]
    H = p.hidden_size
    put = lambda a: jax.device_put(a, cpu)  # noqa: E731
    w_ih, w_hh = put(w.w_ih.T), put(w.w_hh.T)
    b_ih, b_hh = put(w.b_ih), put(w.b_hh)

    @jax.jit
    def run(xs):
        gi = xs @ w_ih + b_ih

        def step(h, g):
            gh = h @ w_hh + b_hh
            r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((xs.shape[1], H), xs.dtype)
        return jax.lax.scan(step, h0, gi)[1]

    xj = put(x)
    return lambda: np.asarray(run(xj).block_until_ready())


def start_jax():
    """Start JAX's CPU runtime now: its thread pool is sized once per process, to the CPUs
    the process may use at that moment (call this before pinning to fewer)."""
    import jax
    import jax.numpy as jnp

    jax.device_put(jnp.zeros(1), jax.devices("cpu")[0]).block_until_ready()


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner, "jax": jax_runner}


def check(name, got, want):
    """Refuse a contender whose output is not the GRU's (float32 rounding apart)."""
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    if not err <= 1e-4 * max(1.0, float(np.max(np.abs(want)))):
        raise AssertionError(f"{name} does not compute the same GRU: max abs error {err:.2e}")
    return err
