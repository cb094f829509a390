"""Temporary forward hooks and the early stop of a forward pass, in one place.

Every hook the adapter installs to observe a forward (capturing layer inputs, block inputs, activation
maxima) is registered by :func:`temporary_hooks` and removed when the ``with`` block ends, whatever
happens inside it. A hook that has seen all it needs raises :class:`StopForward`, which
:func:`run_until_stopped` absorbs: the rest of the forward is skipped.
"""

from __future__ import annotations

import contextlib

from torch import nn

__all__ = ["StopForward", "temporary_hooks", "run_until_stopped"]


class StopForward(Exception):
    """Raised by a capture hook once everything wanted is captured, to skip the rest of a forward."""


@contextlib.contextmanager
def temporary_hooks(modules: dict, make_hook, *, kind: str = "pre", with_kwargs: bool = False):
    """Register ``make_hook(key)`` on each ``modules[key]`` (``kind``: "pre" for a forward pre-hook,
    "post" for a forward hook) for the duration of the block."""
    handles = []
    try:
        for key, module in modules.items():
            hook = make_hook(key)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))
            else:
                handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(run) -> None:
    """``run()``, ending quietly where a hook raised :class:`StopForward`."""
    try:
        run()
    except StopForward:
        pass


def named_modules(root: nn.Module, names) -> dict:
    """``{name: module}`` of ``root`` for the given dotted names."""
    modules = dict(root.named_modules())
    return {name: modules[name] for name in names}
