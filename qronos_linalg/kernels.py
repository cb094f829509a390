"""The sequential inner loop shared by OPTQ, Qronos, GPTAQ and GPFQ, for one block of columns.

For columns i = 0..B−1 of the block, on every row (rows are independent):

    target_i = V_i + offset_i                      (offset: Qronos only, else 0)
    code_i   = clip(round_half_even(target_i / s_i) + z_i, qmin, qmax),   q_i = (code_i − z_i) s_i
    e_i      = q_i                 if propagate_rounded   (GPFQ)
             = (V_i − q_i) / U_ii  otherwise              (OPTQ family)
    V_{>i}  ← V_{>i} − e_i U_{i,>i} + V_i P_{i,>i}        (P: GPTAQ only; V_i taken before rounding)

It writes the codes, the propagated quantities E and the pre-rounding values into the caller's arrays;
the caller applies them to later blocks with matrix products. The backend picks the implementation
(``backend.round_block``): NumPy arrays go to a Numba kernel that works on chunks of rows in parallel,
each chunk transposed into a small buffer (B × ROW_CHUNK) so that both the rounding and the rank-1
updates run over contiguous rows (SIMD); torch tensors on the CPU use the same kernel through zero-copy
NumPy views of their memory; on other devices the loop runs vectorised over rows with torch operations.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np

#: Rows per parallel task of the Numba kernel; a chunk's transposed block (B × ROW_CHUNK) stays in cache.
ROW_CHUNK = 256


@numba.njit(cache=True, parallel=True)
def _round_block_numba(V, U, scale, zero, qmin, qmax, offset, P, use_offset, use_P, propagate_rounded,
                       codes, E, pre):
    out, width = V.shape
    for chunk in numba.prange((out + ROW_CHUNK - 1) // ROW_CHUNK):
        lo = chunk * ROW_CHUNK
        rows = min(out, lo + ROW_CHUNK) - lo
        # Transposed copies of this chunk: Vt[i, r] = V[lo + r, i], and so on.
        Vt = np.empty((width, rows), V.dtype)
        offset_t = np.empty((width, rows), V.dtype)
        st = np.empty((width, rows), V.dtype)
        zt = np.empty((width, rows), V.dtype)
        for r in range(rows):
            for i in range(width):
                Vt[i, r] = V[lo + r, i]
                offset_t[i, r] = offset[lo + r, i] if use_offset else 0
                st[i, r] = scale[lo + r, i]
                zt[i, r] = zero[lo + r, i]
        e = np.empty(rows, V.dtype)
        before = np.empty(rows, V.dtype)
        codes_t = np.empty((width, rows), V.dtype)
        E_t = np.empty((width, rows), V.dtype)
        pre_t = np.empty((width, rows), V.dtype)
        for i in range(width):
            for r in range(rows):
                v = Vt[i, r]
                code = min(max(np.rint((v + offset_t[i, r]) / st[i, r]) + zt[i, r], qmin), qmax)
                q = (code - zt[i, r]) * st[i, r]
                e[r] = q if propagate_rounded else (v - q) / U[i, i]
                before[r] = v
                codes_t[i, r] = code
                E_t[i, r] = e[r]
                pre_t[i, r] = v
            for j in range(i + 1, width):
                row = Vt[j]
                u = U[i, j]
                for r in range(rows):
                    row[r] -= e[r] * u
                if use_P:
                    p = P[i, j]
                    for r in range(rows):
                        row[r] += before[r] * p
        for r in range(rows):
            for i in range(width):
                codes[lo + r, i] = codes_t[i, r]
                E[lo + r, i] = E_t[i, r]
                if use_P:
                    pre[lo + r, i] = pre_t[i, r]


def round_block_numpy(V, U, scale, zero, qmin: int, qmax: int, codes, E, *, pre=None, offset=None, P=None,
                      propagate_rounded=False):
    """Round one block of NumPy arrays with the Numba kernel (see module docstring).

    Writes the codes, E and (with P) the pre-rounding values into ``codes``, ``E``, ``pre`` (all out × B,
    may be views); V is scratch, its contents afterwards are unspecified. The kernel is compiled for
    C-contiguous arrays only (strided views stop SIMD: ~4× slower), so views are copied in, and the
    outputs written to contiguous buffers and copied back.
    """
    dtype = V.dtype
    dummy = np.zeros((1, 1), dtype=dtype)
    contiguous = [np.ascontiguousarray(a) for a in (V, U, scale, zero)]
    outputs = [np.empty(codes.shape, codes.dtype), np.empty(E.shape, dtype),
               dummy if pre is None else np.empty(pre.shape, dtype)]
    _round_block_numba(
        *contiguous, dtype.type(qmin), dtype.type(qmax),
        dummy if offset is None else np.ascontiguousarray(offset),
        dummy if P is None else np.ascontiguousarray(P),
        offset is not None, P is not None, propagate_rounded, *outputs,
    )
    codes[...], E[...] = outputs[0], outputs[1]
    if pre is not None:
        pre[...] = outputs[2]


def round_block_torch_cpu(V, U, scale, zero, qmin: int, qmax: int, codes, E, *, pre=None, offset=None, P=None,
                          propagate_rounded=False):
    """The Numba kernel on CPU torch tensors, through zero-copy NumPy views, with torch's thread count."""
    V, U, scale, zero, codes, E, pre, offset, P = (
        None if t is None else t.numpy() for t in (V, U, scale, zero, codes, E, pre, offset, P)
    )
    with torch_thread_count():
        round_block_numpy(V, U, scale, zero, qmin, qmax, codes, E, pre=pre, offset=offset, P=P,
                          propagate_rounded=propagate_rounded)


@contextlib.contextmanager
def torch_thread_count():
    """Run the Numba kernel for torch tensors with torch's thread count, and keep that count.

    With Numba's OpenMP threading layer, the first parallel launch in a process sets the OpenMP thread
    count, which torch's CPU ops share, to Numba's (all cores): a caller's ``torch.set_num_threads(1)``
    was silently undone by the first solver call. The kernel uses ``min(torch's, Numba's)`` threads here,
    and torch's count (and Numba's) are put back afterwards.
    """
    import torch

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(numba_threads)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def round_block_torch(V, U, scale, zero, qmin: int, qmax: int, codes, E, *, pre=None, offset=None, P=None,
                      propagate_rounded=False):
    """The same loop vectorised over rows with torch operations (any device)."""
    import torch

    for i in range(V.shape[1]):
        v = V[:, i].clone()
        target = v if offset is None else v + offset[:, i]
        code = torch.clamp(torch.round(target / scale[:, i]) + zero[:, i], qmin, qmax)
        q = (code - zero[:, i]) * scale[:, i]
        e = q if propagate_rounded else (v - q) / U[i, i]
        codes[:, i] = code
        E[:, i] = e
        if pre is not None:
            pre[:, i] = v
        V[:, i + 1 :] -= e[:, None] * U[i, i + 1 :][None, :]
        if P is not None:
            V[:, i + 1 :] += v[:, None] * P[i, i + 1 :][None, :]


# --------------------------------------------------------------------------------------------
# YAQA: one tile (rows R × columns C) of the Kronecker-factored rounding (qronos_linalg.yaqa)
# --------------------------------------------------------------------------------------------
#
# The arrays A, codes, E, D hold the tile's row block (all columns); the tile is its columns
# C = [c0, c0 + width) and rows R = [r0, r0 + rows) of the unit factor Ubar_out = diag(U_out)⁻¹ U_out. Rows
# of a tile are coupled (through Ubar_out) and are rounded one after the other; each row is an OPTQ pass along
# C (through U_in), vectorised along the columns. For rows r = 0..rows−1:
#
#     a    = A_{r,C} − Σ_{r'<r} Ubar_out[r0 + r', r0 + r] D_{r',C}  (A: W minus the earlier row blocks)
#     v    = a − X_r                                                (X: the row's earlier column blocks)
#     q_i  = Q(v_i),  e_i = (v_i − q_i) / U_in[i, i],  v_{>i} ← v_{>i} − e_i U_in[i, >i]      (i ∈ C)
#     D_r  = a − q
#
# The loops run over 1-D slices (a loop over a 2-D index from i + 1 is not vectorised by Numba).


@numba.njit(cache=True)
def _round_tile_numba(A, X, Ubar_out, U_in, scale, zero, groups, r0, c0, qmin, qmax, codes, E, D):
    rows, width = X.shape
    # Contiguous copies of the tile's U_in and D (their rows are a whole row of the layer apart in memory, and
    # rows that far apart compete for the same cache sets).
    U_tile = np.empty((width, width), A.dtype)
    for i in range(width):
        U_tile[i, i:] = U_in[c0 + i, c0 + i : c0 + width]
    D_tile = np.empty((rows, width), A.dtype)
    a = np.empty(width, A.dtype)
    v = np.empty(width, A.dtype)
    for r in range(rows):
        a[:] = A[r, c0 : c0 + width]
        for earlier in range(r):
            u, d = Ubar_out[r0 + earlier, r0 + r], D_tile[earlier]
            for i in range(width):
                a[i] -= u * d[i]
        x = X[r]
        for i in range(width):
            v[i] = a[i] - x[i]
        current = v[0]
        for i in range(width):
            s, z = scale[r, groups[c0 + i]], zero[r, groups[c0 + i]]
            code = min(max(np.rint(current / s) + z, qmin), qmax)
            q = (code - z) * s
            e = (current - q) / U_tile[i, i]
            codes[r, c0 + i] = code
            E[r, c0 + i] = e
            D_tile[r, i] = a[i] - q
            if i + 1 < width:  # the next value first, in a register: the rounding chain does not wait for the rest
                current = v[i + 1] - e * U_tile[i, i + 1]
            tail, u_tail = v[i + 2 :], U_tile[i, i + 2 :]
            for j in range(width - i - 2):
                tail[j] -= e * u_tail[j]
        D[r, c0 : c0 + width] = D_tile[r]


def round_tile_numpy(A, X, Ubar_out, U_in, scale, zero, groups, r0: int, c0: int, qmin: int, qmax: int, codes, E, D):
    """Round one YAQA tile of C-contiguous NumPy arrays with the Numba kernel (see the comment above); writes
    the tile's codes, E (the row passes' scaled errors) and D (the rows' errors)."""
    dtype = A.dtype
    _round_tile_numba(A, X, Ubar_out, U_in, scale, zero, groups, r0, c0, dtype.type(qmin), dtype.type(qmax),
                      codes, E, D)


def round_tile_torch(A, X, Ubar_out, U_in, scale, zero, groups, r0: int, c0: int, qmin: int, qmax: int, codes, E, D):
    """The YAQA tile kernel on torch tensors: CPU tensors through zero-copy NumPy views, others through
    :func:`round_tile_via_cpu` (a tile's rows are sequential, so a device loop would launch operations per
    entry)."""
    if A.device.type != "cpu":
        round_tile_via_cpu(A, X, Ubar_out, U_in, scale, zero, groups, r0, c0, qmin, qmax, codes, E, D)
        return
    round_tile_numpy(*(t.numpy() for t in (A, X, Ubar_out, U_in, scale, zero, groups)), r0, c0, qmin, qmax,
                     *(t.numpy() for t in (codes, E, D)))


def round_tile_via_cpu(A, X, Ubar_out, U_in, scale, zero, groups, r0: int, c0: int, qmin: int, qmax: int, codes, E,
                       D):
    """The YAQA tile kernel on tensors of any device: the tile's slices are copied to the CPU, rounded there
    and its codes, E and D copied back."""
    rows, width = X.shape
    R, C = slice(r0, r0 + rows), slice(c0, c0 + width)
    outputs = [t[:, C].cpu().contiguous() for t in (codes, E, D)]
    tile = (A[:, C], X, Ubar_out[R, R], U_in[C, C], scale, zero, groups[C])
    round_tile_numpy(*(t.cpu().contiguous().numpy() for t in tile), 0, 0, qmin, qmax, *(t.numpy() for t in outputs))
    for target, result in zip((codes, E, D), outputs):
        target[:, C] = result.to(target.device)
