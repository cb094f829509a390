"""The ``qronos`` command line: subcommands registered by the core and by the adapters."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that may add subcommands through ``register(subparsers)`` (skipped when their optional
#: dependencies are not installed; ``qronos --help`` then lists what is available).
SUBCOMMAND_MODULES = {"qronos_linalg.adapters.onnx.cli": "onnx", "qronos_linalg.adapters.torch.cli": "lm"}


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(bits=args.bits, group_size=args.group_size, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qronos", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = subparsers.add_parser("demo", help="quantize a synthetic layer with every solver and compare")
    demo.add_argument("--bits", type=int, default=3)
    demo.add_argument("--group-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    unavailable = []
    for module_name, extra in SUBCOMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if (missing.name or "").startswith("qronos_linalg"):
                continue  # this installation has no such adapter
            unavailable.append(f"{module_name}: needs {missing.name!r} (pip install 'qronos_linalg[{extra}]')")
            continue
        module.register(subparsers)
    if unavailable:
        parser.epilog = "Commands not available here: " + "; ".join(unavailable)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
