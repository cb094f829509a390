"""The sequential inner loop shared by OPTQ, Qronos, GPTAQ and GPFQ, for one block of columns.

For columns i = 0..B−1 of the block, on every row (rows are independent):

    target_i = V_i + offset_i                      (offset: Qronos only, else 0)
    code_i   = clip(round_half_even(target_i / s_i) + z_i, qmin, qmax),   q_i = (code_i − z_i) s_i
    e_i      = q_i                 if propagate_rounded   (GPFQ)
             = (V_i − q_i) / U_ii  otherwise              (OPTQ family)
    V_{>i}  ← V_{>i} − e_i U_{i,>i} + V_i P_{i,>i}        (P: GPTAQ only; V_i taken before rounding)

It returns the codes, the propagated quantities E and the pre-rounding values, which the caller
applies to the columns after the block with two matrix products. NumPy arrays go to a Numba kernel
(parallel over rows); torch tensors run the same loop vectorised over rows on their device.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, parallel=True, fastmath=False)
def _round_block_numba(V, U, scale, zero, qmin, qmax, offset, P, use_offset, use_P, propagate_rounded,
                       codes, E, pre):
    out, width = V.shape
    for r in numba.prange(out):
        for i in range(width):
            v = V[r, i]
            target = v + offset[r, i] if use_offset else v
            code = np.rint(target / scale[r, i]) + zero[r, i]
            code = min(max(code, qmin), qmax)
            q = (code - zero[r, i]) * scale[r, i]
            e = q if propagate_rounded else (v - q) / U[i, i]
            codes[r, i] = code
            E[r, i] = e
            pre[r, i] = v
            for j in range(i + 1, width):
                V[r, j] -= e * U[i, j]
            if use_P:
                for j in range(i + 1, width):
                    V[r, j] += v * P[i, j]


def round_block(V, U, scale, zero, qmin: int, qmax: int, *, offset=None, P=None, propagate_rounded=False):
    """Round one block in place (see module docstring). Returns (codes, E, pre), all out × B floats."""
    if isinstance(V, np.ndarray):
        dtype = V.dtype
        codes = np.empty_like(V)
        E = np.empty_like(V)
        pre = np.empty_like(V)
        dummy = np.zeros((1, 1), dtype=dtype)
        _round_block_numba(
            V, U, scale, zero, dtype.type(qmin), dtype.type(qmax),
            dummy if offset is None else offset,
            dummy if P is None else P,
            offset is not None, P is not None, propagate_rounded, codes, E, pre,
        )
        return codes, E, pre
    return _round_block_torch(V, U, scale, zero, qmin, qmax, offset, P, propagate_rounded)


def _round_block_torch(V, U, scale, zero, qmin, qmax, offset, P, propagate_rounded):
    import torch

    codes = torch.empty_like(V)
    E = torch.empty_like(V)
    pre = torch.empty_like(V)
    for i in range(V.shape[1]):
        v = V[:, i].clone()
        target = v if offset is None else v + offset[:, i]
        code = torch.clamp(torch.round(target / scale[:, i]) + zero[:, i], qmin, qmax)
        q = (code - zero[:, i]) * scale[:, i]
        e = q if propagate_rounded else (v - q) / U[i, i]
        codes[:, i] = code
        E[:, i] = e
        pre[:, i] = v
        V[:, i + 1 :] -= e[:, None] * U[i, i + 1 :][None, :]
        if P is not None:
            V[:, i + 1 :] += v[:, None] * P[i, i + 1 :][None, :]
    return codes, E, pre
