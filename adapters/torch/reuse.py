"""Reusing the outputs of settled submodules across the quantized block's forwards.

The quantized stream runs a block once per group of layers, each time from the block's input, because
the group's input depends on the groups quantized before it. A submodule whose supported layers are all
quantized (*settled*; e.g. a Llama block's ``self_attn`` once q/k/v and o are) gets the same input in every
later forward of a batch and computes the same output from it, so it needs to run only once more per
batch: :class:`OutputReuse` keeps that output and returns it to the forwards that follow. The reuse is
exact: a kept output is returned only if the call's arguments equal the kept ones bit for bit (else the
submodule runs), and the copies returned are copies, so a caller writing into one cannot change it.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["settled_modules", "OutputReuse"]


def settled_modules(block: nn.Module, layer_names: list[str], quantized: set[str]) -> list[str]:
    """The largest submodules of ``block`` (never the block itself) that contain supported layers
    (``layer_names``), all of them in ``quantized``; in ``named_modules`` order."""
    settled: list[str] = []
    for name, _ in block.named_modules():
        if not name or any(name.startswith(parent + ".") for parent in settled):
            continue
        inside = {layer for layer in layer_names if layer == name or layer.startswith(name + ".")}
        if inside and inside <= quantized:
            settled.append(name)
    return settled


def _copied(value):
    """``value`` with every tensor in it (nested in tuples, lists and dicts) cloned."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(item) for item in value)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _equal(a, b) -> bool:
    """Bitwise equality of call arguments: tensors by value (dtype and shape included), containers item
    by item, numbers, strings and None by value, any other object only if it is the same object."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if a is None or isinstance(a, (bool, int, float, str)):
        return type(a) is type(b) and a == b
    return a is b


class OutputReuse:
    """Per calibration batch, the outputs of chosen submodules of ``block``, kept from their first forward
    and returned by later ones called with equal arguments.

    ``keep(names)`` chooses the submodules (forgetting the others' outputs); ``runs(runs)`` wraps the
    batches' forwards so that each tells which batch it is (only those forwards keep and reuse outputs);
    ``close()`` (or leaving the ``with`` block) restores the submodules' own forwards. ``reused`` counts
    the forwards skipped.
    """

    def __init__(self, block: nn.Module):
        self._modules = dict(block.named_modules())
        self._kept: dict[str, dict[int, tuple]] = {}
        self._own_forward: dict[str, object] = {}
        self._batch: int | None = None
        self.reused = 0

    def keep(self, names: list[str]) -> None:
        for name in [name for name in self._kept if name not in names]:
            self._restore(name)
        for name in names:
            if name not in self._kept:
                module = self._modules[name]
                self._own_forward[name] = module.__dict__.get("forward")
                module.forward = functools.partial(self._forward, name, module.forward)
                self._kept[name] = {}

    def runs(self, runs: list) -> list:
        return [functools.partial(self._run, batch, run) for batch, run in enumerate(runs)]

    def close(self) -> None:
        for name in list(self._kept):
            self._restore(name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def _run(self, batch: int, run):
        self._batch = batch
        try:
            return run()
        finally:
            self._batch = None

    def _forward(self, name: str, forward, *args, **kwargs):
        kept = self._kept[name]
        entry = kept.get(self._batch) if self._batch is not None else None
        if entry is not None and _equal(entry[0], (args, kwargs)):
            self.reused += 1
            return _copied(entry[1])
        output = forward(*args, **kwargs)
        if self._batch is not None:
            kept[self._batch] = (_copied((args, kwargs)), _copied(output))
        return output

    def _restore(self, name: str) -> None:
        module = self._modules[name]
        own = self._own_forward.pop(name)
        if own is None:
            del module.forward
        else:
            module.forward = own
        del self._kept[name]
