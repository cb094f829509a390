"""Data-parallel calibration on ``torch.distributed``: each rank a share of the windows, owner-rank solves.

Under ``torchrun --nproc-per-node N qronos quantize-lm ...`` (any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``gloo`` on CPU, ``nccl`` on GPU) every rank runs the
two-stream block pipeline on its own contiguous share of the calibration windows (:meth:`DataParallel.share`).
For each layer group, the partial statistics (float64 LayerStats sums and sample counts; YAQA's
Kronecker factors) are **reduced to the layer's owner rank**, which solves the layer and **broadcasts**
its codes, grid and report (the weight is rebuilt from them); every rank writes the same quantized weights and advances
its streams. Statistics differ from one process only by summation order.

Owners: a greedy balance of the solve cost ``in²·out`` — each layer, in the order the layers are solved
(the same on every rank), goes to the rank with the least cost so far (ties: the lower rank), so the
layers of one group (q, k, v; gate, up) are solved side by side on different ranks.

Faults: every collective has the process group's timeout (``timeout_s``), so a rank that dies or hangs
makes the others fail with a :class:`DistributedError` naming the collective and the layer, not wait
forever (a dead peer's closed connection usually fails them at once); ranks that disagree on their
settings are refused at the start (:meth:`DataParallel.check_same`).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from . import DEFAULT_DIST_TIMEOUT_S

__all__ = ["DistributedError", "DataParallel", "launched_distributed", "solve_cost"]


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped (an error, a crash) or the timeout passed."""


def launched_distributed() -> bool:
    """Whether this process is one rank of several (``WORLD_SIZE`` > 1 set by torchrun or a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def solve_cost(in_features: int, out_features: int) -> float:
    """The owner balance's cost of a layer's solve: ``in² · out`` (the blocked updates' flops)."""
    return float(in_features) ** 2 * out_features


@dataclass
class DataParallel:
    """This process's place in the data-parallel run and the owners assigned so far."""

    rank: int
    world_size: int
    timeout_s: float = DEFAULT_DIST_TIMEOUT_S
    owners: dict = field(default_factory=dict)
    loads: list = field(default_factory=list)

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.loads = self.loads or [0.0] * self.world_size

    @classmethod
    def initialize(cls, *, timeout_s: float = DEFAULT_DIST_TIMEOUT_S, backend: str | None = None,
                   init_method: str | None = None, rank: int | None = None,
                   world_size: int | None = None) -> "DataParallel":
        """Join the process group (``env://`` from torchrun unless ``init_method`` is given) unless already
        joined; backend ``nccl`` where CUDA is available, else ``gloo``."""
        if not dist.is_available():
            raise ModuleNotFoundError("this torch build has no torch.distributed")
        if not timeout_s > 0:
            raise ValueError(f"the collective timeout must be positive, got {timeout_s!r} s")
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            options = {} if init_method is None else {"init_method": init_method, "rank": rank,
                                                      "world_size": world_size}
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **options)
        return cls(dist.get_rank(), dist.get_world_size(), timeout_s)

    def finish(self) -> None:
        """Wait until every rank is done (rank 0 writes while the others have nothing left to do), so that no
        rank tears its connections down while another still uses them."""
        with self.collective("waiting for the other ranks to finish"):
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (the end of the run, also after an error)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs and shows progress."""
        return self.rank == 0

    @contextmanager
    def collective(self, what: str):
        """Run collectives, turning their failure into a DistributedError that names ``what``."""
        try:
            yield
        except (RuntimeError, ConnectionError) as error:  # gloo/nccl report a lost peer or a timeout so
            raise DistributedError(f"rank {self.rank} of {self.world_size}: {what} failed: another rank stopped "
                                   f"or the {self.timeout_s:g} s collective timeout passed ({error})") from error

    def check_same(self, settings: dict) -> None:
        """ValueError on every rank unless all ranks run with equal ``settings`` (flags, model, windows)."""
        gathered = [None] * self.world_size
        with self.collective("comparing the ranks' settings"):
            dist.all_gather_object(gathered, settings)
        for other, theirs in enumerate(gathered):
            differing = sorted(key for key in set(settings) | set(theirs) if settings.get(key) != theirs.get(key))
            if differing:
                key = differing[0]
                raise ValueError(f"the ranks disagree on their settings ({', '.join(differing)}): rank "
                                 f"{self.rank} has {key}={settings.get(key)!r}, rank {other} {key}={theirs.get(key)!r}")

    def share(self, windows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the calibration windows (n_windows × seq_len): rank r takes
        ``torch.tensor_split(windows, world_size)[r]``; ValueError with more ranks than windows."""
        if windows.shape[0] < self.world_size:
            raise ValueError(f"{self.world_size} ranks but only {windows.shape[0]} calibration windows: every rank "
                             f"needs at least one (use --windows {self.world_size} or more, or fewer ranks)")
        return torch.tensor_split(windows, self.world_size)[self.rank]

    def first_window(self, windows: torch.Tensor) -> int:
        """The index of this rank's first window in the whole set (:meth:`share`)."""
        return sum(int(share.shape[0]) for share in torch.tensor_split(windows, self.world_size)[: self.rank])

    def owner(self, name: str, in_features: int, out_features: int) -> int:
        """The rank that solves layer ``name`` (assigned on first call: the least loaded rank)."""
        if name not in self.owners:
            rank = min(range(self.world_size), key=lambda r: (self.loads[r], r))
            self.loads[rank] += solve_cost(in_features, out_features)
            self.owners[name] = rank
        return self.owners[name]

    def reduce(self, tensors: list, count: int, destinations: set, what: str) -> int:
        """Sum ``tensors`` (in place) and ``count`` over the ranks into every rank of ``destinations`` (one:
        ``reduce``; several: ``all_reduce``); returns the summed count there (elsewhere: meaningless)."""
        total = torch.tensor([float(count)], dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
        with self.collective(f"reducing the statistics of {what}"):
            for tensor in [*tensors, total]:
                if len(destinations) == 1:
                    dist.reduce(tensor, dst=next(iter(destinations)))
                else:
                    dist.all_reduce(tensor)
        return int(round(float(total.item())))

    def share_solutions(self, names: list, solved: dict) -> dict:
        """Every layer's ``(result, report)`` on every rank, each broadcast from its owner (``solved``: the
        ones this rank owns), in the order of ``names``; the report records the owner. Only codes, grid and
        report travel (about 1 byte per weight): the others rebuild the weight as ``grid.dequantize(codes)``,
        which is exactly the owner's (QuantResult's invariant)."""
        shared = {}
        for name in names:
            owner = self.owners[name]
            mine = solved.get(name)
            box = [None if mine is None else (dataclasses.replace(mine[0], weight=None), mine[1])]
            with self.collective(f"broadcasting layer {name} from rank {owner}"):
                dist.broadcast_object_list(box, src=owner)
            result, report = mine if mine is not None else box[0]
            if mine is None:
                result = dataclasses.replace(result, weight=result.grid.dequantize(result.codes))
            shared[name] = (result, {**report, "owner": owner})
        return shared
