"""A self-contained demonstration: one layer, every solver, objective and time per solver.

The layer's float input X has a decaying spectrum (as real activations do) and X̃ is X after an upstream
layer was rounded: X̃ = X + E with E correlated to X, so Qronos' correction of inherited error shows.
"""

from __future__ import annotations

import time

import numpy as np

from . import LayerStats, UniformGrid, gpfq, gptaq, optq, output_error, qronos, rtn

#: Power-law decay of the input spectrum (singular value k ∝ (k+1)^−DECAY).
SPECTRUM_DECAY = 0.7
#: Relative size of the inherited upstream error in X̃.
UPSTREAM_ERROR = 0.1


def synthetic_layer(in_features=256, out_features=256, samples=2048, seed=0):
    """(W, X, X̃): a random layer with correlated inputs and inputs from a quantized upstream layer."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((in_features, in_features)))
    spectrum = (np.arange(in_features) + 1.0) ** -SPECTRUM_DECAY
    X = (rng.standard_normal((samples, in_features)) * spectrum) @ basis.T
    upstream = rng.standard_normal((in_features, in_features)) / np.sqrt(in_features)
    X_tilde = X + UPSTREAM_ERROR * np.sign(X @ upstream) * np.abs(X).mean()
    W = rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)
    return W, X, X_tilde


def run_demo(bits=3, group_size=64, seed=0, out=print) -> dict:
    """Quantize the synthetic layer with every solver; print and return the relative output errors."""
    W, X, X_tilde = synthetic_layer(seed=seed)
    stats = LayerStats(W.shape[1])
    for batch in range(0, X.shape[0], 512):
        stats.update(X[batch : batch + 512], X_tilde[batch : batch + 512])
    grid = UniformGrid.fit(W, bits, group_size=group_size)
    reference = output_error(W, np.zeros_like(W), stats.H, stats.G, stats.H_float)
    solvers = {
        "rtn": lambda: rtn(W, grid),
        "optq": lambda: optq(W, stats.H, grid),
        "gpfq": lambda: gpfq(W, stats.H, stats.G, grid),
        "gptaq": lambda: gptaq(W, stats.H, stats.G, grid),
        "qronos": lambda: qronos(W, stats.H, stats.G, grid),
    }
    out(f"layer {W.shape[0]}x{W.shape[1]}, {stats.count} samples, grid {grid}")
    out(f"{'solver':8s} {'rel. output error':>18s} {'time [s]':>9s}")
    errors = {}
    for name, solve in solvers.items():
        start = time.perf_counter()
        result = solve()
        elapsed = time.perf_counter() - start
        errors[name] = float(np.sqrt(output_error(W, result.weight, stats.H, stats.G, stats.H_float) / reference))
        out(f"{name:8s} {errors[name]:18.5f} {elapsed:9.3f}")
    return errors
