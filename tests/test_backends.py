"""The array type picks the backend; NumPy float64 and torch float64 give the same codes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import UniformGrid, gpfq, gptaq, optq, qronos, rtn
from solver_problems import make_problem, problem_options

SOLVERS = {
    "rtn": lambda p, W, H, G, grid, **kw: rtn(W, grid),
    "optq": lambda p, W, H, G, grid, **kw: optq(W, H, grid, **kw),
    "qronos": lambda p, W, H, G, grid, **kw: qronos(W, H, G, grid, **kw),
    "gptaq": lambda p, W, H, G, grid, **kw: gptaq(W, H, G, grid, **kw),
    "gpfq": lambda p, W, H, G, grid, **kw: gpfq(W, H, G, grid, act_order=kw.get("act_order", False)),
}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(problem_options, st.booleans(), st.integers(1, 8))
def test_numpy_and_torch_float64_give_the_same_codes(torch, opts, act_order, block_size):
    p = make_problem(**opts, noise=0.4)
    tensors = [torch.from_numpy(M.copy()) for M in (p.W, p.H, p.G)]
    torch_grid = UniformGrid(torch.from_numpy(p.grid.scale.copy()), torch.from_numpy(p.grid.zero.copy()),
                             p.grid.bits, group_size=p.grid.group_size)
    for name, solve in SOLVERS.items():
        kw = {} if name == "rtn" else dict(act_order=act_order)
        if name in ("optq", "qronos", "gptaq"):
            kw["block_size"] = block_size
        on_numpy = solve(p, p.W, p.H, p.G, p.grid, **kw)
        on_torch = solve(p, *tensors, torch_grid, **kw)
        assert isinstance(on_torch.weight, torch.Tensor) and isinstance(on_torch.codes, torch.Tensor)
        np.testing.assert_array_equal(on_torch.codes.numpy(), on_numpy.codes, err_msg=name)
        np.testing.assert_allclose(on_torch.weight.numpy(), on_numpy.weight, rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_result_follows_the_weight_dtype_and_equals_its_grid_dequantization(name):
    p = make_problem(5, out=6, n=40, bits=4, group_size=8)
    W32, H32, G32 = (M.astype(np.float32) for M in (p.W, p.H, p.G))
    grid32 = UniformGrid.fit(W32, 4, group_size=8)
    result = SOLVERS[name](p, W32, H32, G32, grid32)
    assert result.weight.dtype == np.float32 and result.codes.dtype == np.uint8
    np.testing.assert_array_equal(result.weight, result.grid.dequantize(result.codes))
    assert result.grid is grid32
    # float32 and float64 runs of a well-conditioned problem agree on nearly every code
    result64 = SOLVERS[name](p, p.W, p.H, p.G, UniformGrid(grid32.scale.astype(np.float64),
                                                           grid32.zero.astype(np.float64), 4, group_size=8))
    assert np.mean(result.codes == result64.codes) > 0.97


def test_torch_half_precision_weights_are_solved_in_float32_and_returned_in_half(torch):
    p = make_problem(6, out=4, n=16)
    W = torch.from_numpy(p.W).to(torch.bfloat16)
    grid = UniformGrid.fit(W.float(), 4)
    result = qronos(W, torch.from_numpy(p.H), torch.from_numpy(p.G), grid)
    assert result.weight.dtype == torch.bfloat16
    assert torch.equal(result.codes, grid.quantize(result.grid.dequantize(result.codes)))


def test_unsupported_array_type_is_rejected():
    with pytest.raises(TypeError, match="numpy.ndarray or torch.Tensor"):
        UniformGrid.fit([[1.0, 2.0]], 4)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.integers(1, 12), st.sampled_from(["optq", "qronos", "gptaq", "gpfq"]),
       st.integers(0, 2**16))
def test_torch_device_loop_equals_the_numba_kernel(torch, out, width, kind, seed):
    """The per-column torch loop (used on GPUs, which CI lacks) equals the Numba kernel on the same block."""
    from qronos_linalg.kernels import round_block_numpy, round_block_torch

    rng = np.random.default_rng(seed)
    V = rng.standard_normal((out, width)) * 3
    U = np.triu(rng.standard_normal((width, width))) + 3 * np.eye(width)
    scale = rng.uniform(0.2, 1.0, (out, width))
    zero = rng.integers(0, 16, (out, width)).astype(np.float64)
    offset = rng.standard_normal((out, width)) if kind == "qronos" else None
    P = np.triu(rng.standard_normal((width, width)), 1) if kind == "gptaq" else None
    propagate = kind == "gpfq"
    outputs = {}
    for name, run in (("numba", round_block_numpy), ("torch", round_block_torch)):
        block = V.copy()
        codes = np.zeros((out, width), np.uint8)
        E = np.zeros((out, width))
        pre = np.zeros((out, width)) if P is not None else None
        if name == "numba":
            run(block, U, scale, zero, 0, 15, codes, E, pre=pre, offset=offset, P=P, propagate_rounded=propagate)
        else:
            t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731  (shares memory)
            run(t(block), t(U), t(scale), t(zero), 0, 15, t(codes), t(E), pre=t(pre), offset=t(offset), P=t(P),
                propagate_rounded=propagate)
        outputs[name] = (codes, E, pre)
    for got, expected in zip(outputs["torch"], outputs["numba"]):
        if expected is not None:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


THREAD_CHECK = """
import torch
torch.set_num_threads(1)
from qronos_linalg import UniformGrid, gpfq, optq
generator = torch.Generator().manual_seed(0)
X = torch.randn(256, 64, generator=generator)
W = torch.randn(32, 64, generator=generator)
H = X.T @ X
grid = UniformGrid.fit(W, 4)
optq(W, H, grid)
gpfq(W, H, H, grid)
print(torch.get_num_threads())
"""


def test_solvers_on_torch_tensors_keep_the_callers_torch_thread_count(torch):
    """Numba's OpenMP layer resets the OpenMP thread count torch shares on its first launch in a
    process; run in a fresh interpreter so that launch happens inside the solver."""
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    environment["NUMBA_NUM_THREADS"] = "2"  # more than the caller's 1 even on a one-core machine
    child = subprocess.run([sys.executable, "-c", THREAD_CHECK], capture_output=True, text=True, env=environment,
                           check=True)
    assert child.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.parametrize("name", list(SOLVERS))
def test_torch_weights_that_require_grad_are_detached_and_bfloat16_returned_as_bfloat16(torch, name):
    p = make_problem(7, out=5, n=24, bits=3, group_size=8)
    W = torch.from_numpy(p.W).requires_grad_(True)
    H, G = torch.from_numpy(p.H), torch.from_numpy(p.G)
    grid = UniformGrid(torch.from_numpy(p.grid.scale.copy()), torch.from_numpy(p.grid.zero.copy()), 3, group_size=8)
    result = SOLVERS[name](p, W, H, G, grid)
    assert not result.weight.requires_grad and W.requires_grad
    expected = SOLVERS[name](p, p.W, p.H, p.G, p.grid)
    np.testing.assert_array_equal(result.codes.numpy(), expected.codes)
    half = SOLVERS[name](p, W.detach().to(torch.bfloat16), H, G, grid)
    assert half.weight.dtype == torch.bfloat16
    assert torch.equal(half.weight, grid.dequantize(half.codes, "float32").to(torch.bfloat16))
