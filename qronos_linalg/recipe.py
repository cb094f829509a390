"""One recipe for every adapter: a grid spec, a solver spec, the solver registry and ``solve``.

``solve(W, stats, grid_spec, solver_spec)`` is what the ONNX and the PyTorch adapters call for each
layer: it fits the grid to the original weights (after MagR if asked), rounds with the registered
solver, and reports the relative output errors of the solver and of RTN on the same frozen grid,
``sqrt(‖XWᵀ − X̃Qᵀ‖² / ‖XWᵀ‖²)`` from the statistics (docs/conventions.md). Every parameter is
validated here, once, when a spec is built — before any calibration runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .activations import check_act_bits
from .backend import backend_of, dtype_name
from .grid import (SEARCH_METHODS, UniformGrid, check_bits, check_group_size, check_scale_dtype, check_search,
                   check_shrink)
from .magr import check_magr_alpha, magr
from .solvers import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMP, DEFAULT_GPTAQ_ALPHA, QuantResult, check_block_size,
                      check_damp, check_damp_mode, gpfq, gptaq, optq, output_error, qronos, rtn)
from .yaqa import yaqa, yaqa_qronos

#: The statistics a solver can ask for: H = X̃ᵀX̃ (YAQA: its input factor H_in), G = X̃ᵀX, and YAQA's output
#: factor H_out (H_float = XᵀX only for the report).
STATISTICS = ("H", "G", "H_out")


@dataclass(frozen=True)
class GridSpec:
    """How to fit the frozen grid (:meth:`UniformGrid.fit`): bits, group size (None = per channel),
    symmetric or asymmetric, min-max range shrink β, range search ("minmax" or "mse"), narrow range, and
    ``scale_dtype``: the dtype an export stores the scales in (None: the weights' own), which the scales
    are rounded to before any rounding of the weights, so the export holds exactly the solver's grid."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    shrink: float = 1.0
    search: str = "minmax"
    narrow_range: bool = False
    scale_dtype: str | None = None

    def __post_init__(self):
        check_bits(self.bits)
        check_group_size(self.group_size)
        check_shrink(self.shrink)
        check_search(self.search)
        check_scale_dtype(self.scale_dtype)

    def fit(self, W) -> UniformGrid:
        grid = UniformGrid.fit(W, self.bits, symmetric=self.symmetric, group_size=self.group_size,
                               shrink=self.shrink, search=self.search, narrow_range=self.narrow_range)
        return grid if self.scale_dtype is None else grid.with_scales_in(self.scale_dtype)


@dataclass(frozen=True)
class Solver:
    """A registered rounding algorithm: ``run(W, S, grid, spec)`` with ``S`` the statistics it needs by name
    (:data:`STATISTICS`), and its defaults (damping coefficient and mode — None where it has no damping —
    and act-order)."""

    name: str
    statistics: tuple[str, ...]
    default_damp: float | None
    run: Callable[..., QuantResult] = field(repr=False)
    summary: str = ""
    default_damp_mode: str = "relative"
    default_act_order: bool = False
    act_order_supported: bool = True

    @property
    def damped(self) -> bool:
        return self.default_damp is not None

    @property
    def uses_float_inputs(self) -> bool:
        """Whether the solver fits the float model's X (needs G = X̃ᵀX), not only X̃."""
        return "G" in self.statistics

    @property
    def rounds_with_gradient_factors_only(self) -> bool:
        """Whether every statistic comes from YAQA's gradient pass (H_in, H_out: no calibration streams)."""
        return "H_out" in self.statistics and not self.uses_float_inputs


#: Act-order (columns by decreasing diag H) by default for every column-order solver, from measurements:
#: SmolLM2 W3 g128 OPTQ at 128 × 512 calibration, Wikipedia perplexity 72.5 → 52.2 and news 106.4 → 76.7;
#: MiniLM (ONNX) W4 g32: every solver's cosine up and its mean layer error down 8–9 % (docs/cli.md).
DEFAULT_ACT_ORDER = True


def _optq_family(spec) -> dict:
    return {"damp": spec.damping, "damp_mode": spec.damping_mode, "block_size": spec.block_size,
            "act_order": spec.act_ordered}


def _yaqa(spec) -> dict:
    return {"damp": spec.damping, "damp_mode": spec.damping_mode, "block_size": spec.block_size,
            "act_order": spec.act_ordered}


SOLVERS = {solver.name: solver for solver in (
    Solver("rtn", (), None, lambda W, S, grid, spec: rtn(W, grid), "round to nearest", act_order_supported=False),
    Solver("optq", ("H",), DEFAULT_DAMP, lambda W, S, grid, spec: optq(W, S["H"], grid, **_optq_family(spec)),
           "OPTQ/GPTQ: min ‖X̃(w − q)‖², error feedback through the Cholesky factor of H⁻¹",
           default_act_order=DEFAULT_ACT_ORDER),
    Solver("gpfq", ("H", "G"), None,
           lambda W, S, grid, spec: gpfq(W, S["H"], S["G"], grid, act_order=spec.act_ordered),
           "GPFQ: greedy path following of Xw, no diffusion", default_act_order=DEFAULT_ACT_ORDER),
    Solver("gptaq", ("H", "G"), DEFAULT_DAMP,
           lambda W, S, grid, spec: gptaq(W, S["H"], S["G"], grid, alpha=spec.gptaq_alpha, **_optq_family(spec)),
           "GPTAQ: OPTQ plus the asymmetric term α(X − X̃)ᵀX̃", default_act_order=DEFAULT_ACT_ORDER),
    Solver("qronos", ("H", "G"), DEFAULT_DAMP,
           lambda W, S, grid, spec: qronos(W, S["H"], S["G"], grid, **_optq_family(spec)),
           "Qronos: correct the past (X̃ vs Xw), shape the future (OPTQ on H)", default_act_order=DEFAULT_ACT_ORDER),
    Solver("yaqa", ("H", "H_out"), DEFAULT_DAMP,
           lambda W, S, grid, spec: yaqa(W, S["H"], S["H_out"], grid, **_yaqa(spec)),
           "YAQA: OPTQ on vec(W) with the Kronecker Hessian H_out ⊗ H_in of the network's output KL",
           default_act_order=DEFAULT_ACT_ORDER),
    Solver("yaqa-qronos", ("H", "G", "H_out"), DEFAULT_DAMP,
           lambda W, S, grid, spec: yaqa_qronos(W, S["H"], S["G"], S["H_out"], grid, **_yaqa(spec)),
           "YAQA's H_out with Qronos' inputs: YAQA on the least-squares target W GᵀH⁻¹ of the partially "
           "quantized layer", default_act_order=DEFAULT_ACT_ORDER),
)}
#: Algorithm names in registry order.
ALGORITHMS = tuple(SOLVERS)


def algorithms_using(available) -> tuple[str, ...]:
    """The algorithms whose statistics are all among ``available`` (what an adapter can collect)."""
    return tuple(name for name, solver in SOLVERS.items() if set(solver.statistics) <= set(available))


@dataclass(frozen=True)
class SolverSpec:
    """Which solver and its settings: the damping coefficient and what it multiplies (``damp_mode``:
    "relative" = mean(diag H), "spectral" = σ_max(H)), block size, act-order, GPTAQ's α, and MagR's α
    (None = no MagR) applied to W before the grid is fitted. ``damp``, ``damp_mode`` and ``act_order``
    left None take the solver's defaults (:data:`SOLVERS`); :meth:`resolved` fills them in."""

    algorithm: str = "qronos"
    damp: float | None = None
    damp_mode: str | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    act_order: bool | None = None
    gptaq_alpha: float = DEFAULT_GPTAQ_ALPHA
    magr_alpha: float | None = None

    def __post_init__(self):
        if self.algorithm not in SOLVERS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.damp is not None:
            check_damp(self.damp)
            if not self.solver.damped:
                raise ValueError(f"{self.algorithm} has no damping; drop damp (--damp) or choose "
                                 f"{' / '.join(name for name, s in SOLVERS.items() if s.damped)}")
        if self.damp_mode is not None:
            check_damp_mode(self.damp_mode)
        if self.act_order is not None and not isinstance(self.act_order, bool):
            raise ValueError(f"act_order must be true, false or None (the solver's default), got {self.act_order!r}")
        if self.act_order and not self.solver.act_order_supported:
            raise ValueError(f"{self.algorithm} rounds every entry on its own, so it has no act-order; drop act_order "
                             "(--act-order)")
        check_block_size(self.block_size)
        if isinstance(self.gptaq_alpha, bool) or not isinstance(self.gptaq_alpha, (int, float)) \
                or not math.isfinite(self.gptaq_alpha):
            raise ValueError(f"gptaq_alpha must be a finite number, got {self.gptaq_alpha!r}")
        check_magr_alpha(self.magr_alpha)

    @property
    def solver(self) -> Solver:
        return SOLVERS[self.algorithm]

    @property
    def damping(self) -> float | None:
        """The damping coefficient the solver runs with (None where it has none)."""
        if not self.solver.damped:
            return None
        return self.solver.default_damp if self.damp is None else self.damp

    @property
    def damping_mode(self) -> str:
        return self.solver.default_damp_mode if self.damp_mode is None else self.damp_mode

    @property
    def act_ordered(self) -> bool:
        """Whether the columns are processed by decreasing diag(H)."""
        return self.solver.default_act_order if self.act_order is None else self.act_order

    def resolved(self) -> "SolverSpec":
        """This spec with the solver's defaults filled in (what a report records)."""
        return dataclasses.replace(self, damp=self.damping, damp_mode=self.damping_mode if self.solver.damped else None,
                                   act_order=self.act_ordered)

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics this spec needs (MagR needs H even for RTN)."""
        needed = set(self.solver.statistics) | ({"H"} if self.magr_alpha is not None else set())
        return tuple(name for name in STATISTICS if name in needed)


@dataclass(frozen=True)
class Recipe:
    """Everything both adapters share: the grid, the solver, and per-token activation bits (None = none)."""

    grid: GridSpec = GridSpec()
    solver: SolverSpec = SolverSpec()
    act_bits: int | None = None

    def __post_init__(self):
        if not isinstance(self.grid, GridSpec) or not isinstance(self.solver, SolverSpec):
            raise TypeError("Recipe needs a GridSpec and a SolverSpec")
        check_act_bits(self.act_bits)

    def to_dict(self) -> dict:
        return {"grid": asdict(self.grid), "solver": asdict(self.solver), "act_bits": self.act_bits}

    def resolved(self) -> "Recipe":
        """This recipe with the solver's defaults filled in."""
        return dataclasses.replace(self, solver=self.solver.resolved())

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        return cls(GridSpec(**data["grid"]), SolverSpec(**data["solver"]), data.get("act_bits"))


@dataclass
class LayerReport:
    """What ``solve`` did to one layer, with ``error = ‖XWᵀ − X̃Qᵀ‖²``, ``error_rtn`` (RTN on the same grid)
    and ``reference = ‖XWᵀ‖²`` from the statistics (None when the float statistics were not collected).
    For YAQA (``objective`` "kronecker"; not yaqa-qronos, which reports the output error) the errors are the two-sided ``tr(ΔW H_in ΔWᵀ H_out)`` against
    ``tr(W H_in Wᵀ H_out)``, and ``error_one_sided`` / ``reference_one_sided`` the one-sided proxy
    ``tr(ΔW H_in ΔWᵀ)`` against ``tr(W H_in Wᵀ)`` (RTN's in ``error_rtn_one_sided``).
    ``input_gap = ‖X̃ − X‖_F / ‖X‖_F``; ``dead_columns``: inputs that were zero on every sample (rounded to
    Q(0)); ``note``: why the layer was not solved as asked (e.g. left at RTN)."""

    name: str | None
    shape: tuple
    algorithm: str
    bits: int
    group_size: int | None
    samples: int
    damp: float | None
    dead_columns: int
    time_s: float
    damp_mode: str | None = None
    input_gap: float | None = None
    error: float | None = None
    error_rtn: float | None = None
    reference: float | None = None
    note: str | None = None
    objective: str = "output"
    error_one_sided: float | None = None
    error_rtn_one_sided: float | None = None
    reference_one_sided: float | None = None

    @property
    def rel_error(self) -> float | None:
        return _relative(self.error, self.reference)

    @property
    def rel_error_rtn(self) -> float | None:
        return _relative(self.error_rtn, self.reference)

    def to_dict(self) -> dict:
        extra = {}
        if self.objective == "kronecker":
            extra = {"rel_error_one_sided": _relative(self.error_one_sided, self.reference_one_sided),
                     "rel_error_rtn_one_sided": _relative(self.error_rtn_one_sided, self.reference_one_sided)}
        return {**asdict(self), "shape": list(self.shape), "rel_error": self.rel_error,
                "rel_error_rtn": self.rel_error_rtn, **extra}

    @classmethod
    def combine(cls, reports: list["LayerReport"], name: str | None = None) -> "LayerReport":
        """One report for a layer solved in parts (the groups of a grouped convolution): errors, references,
        samples of one part, times and dead columns summed, the largest damping, rows stacked."""
        first = reports[0]
        damps = [r.damp for r in reports if r.damp is not None]
        notes = sorted({r.note for r in reports if r.note})
        total = (lambda key: None if any(getattr(r, key) is None for r in reports)
                 else sum(getattr(r, key) for r in reports))
        return cls(
            name=name or first.name, shape=(sum(r.shape[0] for r in reports), first.shape[1]),
            algorithm=first.algorithm, bits=first.bits, group_size=first.group_size, samples=first.samples,
            damp=max(damps) if damps else None, damp_mode=first.damp_mode,
            dead_columns=sum(r.dead_columns for r in reports),
            time_s=sum(r.time_s for r in reports), input_gap=None if len(reports) > 1 else first.input_gap,
            error=total("error"), error_rtn=total("error_rtn"), reference=total("reference"),
            note="; ".join(notes) or None,
        )


def _relative(error, reference):
    if error is None or reference is None:
        return None
    return math.sqrt(error / reference) if reference > 0 else 0.0


def _input_gap(H, G, H_float) -> float:
    """``‖X̃ − X‖_F / ‖X‖_F = sqrt((tr H − 2 tr G + tr H_float) / tr H_float)``."""
    xp = backend_of(H)
    reference = xp.trace(H_float)
    gap = xp.trace(H) - 2 * xp.trace(G) + reference
    return math.sqrt(max(gap, 0.0) / reference) if reference > 0 else 0.0


def solve(W, stats, grid_spec: GridSpec, solver_spec: SolverSpec, *, name: str | None = None,
          errors: bool = True) -> tuple[QuantResult, LayerReport]:
    """Fit the grid, round W with ``solver_spec``'s solver, and report (see :class:`LayerReport`).

    ``W`` (out × in) is the layer's weight in its stored dtype: the grid is fitted in that dtype, so its
    scales are exactly representable there, and the solver runs in float64. ``stats``: an object with
    the statistics the solver needs as attributes ``H``, ``G`` (and ``H_float`` for the errors), ``count``
    and ``name``, e.g. :class:`~qronos_linalg.LayerStats`; None for a recipe that needs none (RTN) without
    errors. A layer whose H is zero (all its calibration inputs were zero) has nothing to fit: it is left
    at RTN and the report says so. With ``errors=False`` the report has no errors.
    """
    if stats is None and (solver_spec.statistics or errors):
        raise ValueError(f"{solver_spec.algorithm} needs layer statistics {solver_spec.statistics or ()}"
                         f"{' and the errors need H, G, H_float' if errors else ''}; got stats=None")
    xp = backend_of(W)
    solver = solver_spec.solver
    start = time.perf_counter()
    W64 = xp.cast(W, "float64")
    S = {name: xp.asarray(getattr(stats, name), "float64", like=W64) for name in solver_spec.statistics}
    target = W64 if solver_spec.magr_alpha is None else magr(W64, S["H"], solver_spec.magr_alpha)
    grid = grid_spec.fit(xp.cast(target, dtype_name(W)))
    note = None
    H = S.get("H")
    dead = 0 if H is None else int((xp.diag(H) == 0).sum())
    if H is not None and dead == W.shape[1]:
        result, note = rtn(target, grid), "H = 0 (every calibration input of this layer was zero): left at RTN"
    else:
        result = solver.run(target, S, grid, solver_spec)
    elapsed = time.perf_counter() - start
    report = LayerReport(name=name or getattr(stats, "name", None), shape=tuple(W.shape), algorithm=solver.name,
                         bits=grid.bits, group_size=grid.group_size, samples=int(getattr(stats, "count", 0)),
                         damp=result.damp, damp_mode=result.damp_mode, dead_columns=dead, time_s=elapsed, note=note)
    if errors:
        rtn_weight = result.weight if result.algorithm == "rtn" else rtn(target, grid).weight
        if solver.rounds_with_gradient_factors_only:
            _kronecker_errors(report, W64, result.weight, rtn_weight, S["H"], S["H_out"])
        else:
            _output_errors(report, W64, result.weight, rtn_weight, stats, xp)
    return result, report


def _output_errors(report: LayerReport, W64, Q, Q_rtn, stats, xp) -> None:
    """``‖XWᵀ − X̃Qᵀ‖²`` for Q and RTN, ``‖XWᵀ‖²`` and the input gap, from H, G and H_float."""
    H, G, H_float = (xp.asarray(getattr(stats, name), "float64", like=W64) for name in ("H", "G", "H_float"))
    report.reference = max(xp.to_scalar(((W64 @ H_float) * W64).sum()), 0.0)
    report.error_rtn = output_error(W64, Q_rtn, H, G, H_float)
    report.error = output_error(W64, Q, H, G, H_float)
    report.input_gap = _input_gap(H, G, H_float)


def _kronecker_errors(report: LayerReport, W64, Q, Q_rtn, H_in, H_out) -> None:
    """YAQA's objective ``tr(ΔW H_in ΔWᵀ H_out)`` (two-sided) and ``tr(ΔW H_in ΔWᵀ)`` (one-sided) for Q and
    RTN, with the same forms of W as references."""
    xp = backend_of(W64)

    def two_sided(D):
        return max(xp.to_scalar(((H_out @ (D @ H_in)) * D).sum()), 0.0)

    def one_sided(D):
        return max(xp.to_scalar(((D @ H_in) * D).sum()), 0.0)

    report.objective = "kronecker"
    report.reference, report.reference_one_sided = two_sided(W64), one_sided(W64)
    report.error, report.error_one_sided = two_sided(W64 - Q), one_sided(W64 - Q)
    report.error_rtn, report.error_rtn_one_sided = two_sided(W64 - Q_rtn), one_sided(W64 - Q_rtn)


__all__ = ["ALGORITHMS", "SEARCH_METHODS", "SOLVERS", "STATISTICS", "algorithms_using", "GridSpec", "LayerReport", "Recipe",
           "Solver", "SolverSpec", "solve"]
