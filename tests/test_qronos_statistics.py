"""Seeded statistical check: with X̃ ≠ X, Qronos' objective beats OPTQ's (and RTN's) on average."""

import numpy as np

from qronos_linalg import UniformGrid, gpfq, optq, output_error, qronos, rtn

N_PROBLEMS = 60


def test_qronos_objective_is_below_optq_on_average_when_inputs_differ():
    ratios_optq, wins = [], 0
    for seed in range(N_PROBLEMS):
        rng = np.random.default_rng(1000 + seed)
        n, out, samples = 32, 16, 256
        X = rng.standard_normal((samples, n)) @ (np.eye(n) + 0.4 * rng.standard_normal((n, n)))
        X_tilde = X + 0.2 * X.std() * rng.standard_normal(X.shape)
        W = rng.standard_normal((out, n))
        H, G, H_float = X_tilde.T @ X_tilde, X_tilde.T @ X, X.T @ X
        grid = UniformGrid.fit(W, 3, group_size=16)
        err = {name: output_error(W, result.weight, H, G, H_float) for name, result in {
            "rtn": rtn(W, grid),
            "optq": optq(W, H, grid),
            "gpfq": gpfq(W, H, G, grid),
            "qronos": qronos(W, H, G, grid),
        }.items()}
        ratios_optq.append(err["qronos"] / err["optq"])
        wins += err["qronos"] < err["optq"]
        assert err["qronos"] < err["rtn"]
    assert np.mean(ratios_optq) < 0.95
    assert wins >= 0.8 * N_PROBLEMS
