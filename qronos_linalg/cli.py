"""The ``qronos`` command line and its one dialect, shared by every subcommand.

Subcommands come from the entry-point group ``qronos_linalg.commands`` (``pyproject.toml``): each entry
is a ``register(subparsers)`` function; one whose optional dependencies are missing is listed in
``qronos --help`` with the extra to install. Every quantize command takes the recipe flags built once
here from :data:`qronos_linalg.options.OPTIONS`, plus ``--config FILE`` (YAML/JSON; flags win),
``--report``, ``--overwrite``, ``--quiet``, ``--json``, ``--seed`` and ``--threads``.

Exit codes: 0 done; 2 bad input (a one-line ``qronos COMMAND: error: …``, nothing written): every
ValueError (validation), OSError (missing, unreadable or existing files) and ModuleNotFoundError (an optional
dependency not installed); 130 interrupted (Ctrl-C or
SIGTERM; temporary outputs are removed). Any other error is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys

from . import __version__
from .options import (OPTIONS, OPTIONS_BY_KEY, ConfigError, load_config_file, parse_bool, parse_int,
                      parse_optional_int, parse_value, recipe_from_options)
from .recipe import Recipe

COMMAND_GROUP = "qronos_linalg.commands"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: Flags that are never read from a --config file.
NOT_CONFIGURABLE = ("config", "overwrite", "quiet", "json", "report", "func", "command", "settings")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; every flag's help already states its default."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``qronos quantize: error: …``, exit 2) instead of usage + error."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Settings:
    """The flags of one command whose values may also come from ``--config``: they default to
    ``argparse.SUPPRESS`` (so only flags actually given appear in the namespace), and :meth:`resolve`
    merges the command's defaults, the config file and the flags, in that order."""

    def __init__(self, parser: argparse.ArgumentParser, recipe_defaults: Recipe | None = None):
        self.parser = parser
        self.defaults: dict = {}
        self.parsers: dict = {}
        self.recipe_defaults = recipe_defaults
        if recipe_defaults is not None:
            self._add_recipe(recipe_defaults)

    def add(self, *flags, dest: str, default, help: str, type=None, choices=None, metavar=None, group=None,
            none_text: str = "none") -> None:
        """A valued flag (``type`` parses its text, also for config-file strings)."""
        target = group or self.parser
        shown = none_text if default is None else default
        target.add_argument(*flags, dest=dest, type=_argparse_type(type) if type else None, choices=choices,
                            metavar=metavar, default=argparse.SUPPRESS, help=f"{help} (default: {shown})")
        self.defaults[dest] = default
        self.parsers[dest] = type or str

    def add_switch(self, flag: str, dest: str, default: bool | None, help: str, *, off: tuple[str, str],
                   group=None) -> None:
        """``flag`` sets True, ``off = (flag, help)`` sets False; ``default`` None is a third state that
        ``help`` describes."""
        target = group or self.parser
        mark = lambda state: " (default)" if default is state else ""  # noqa: E731
        target.add_argument(flag, dest=dest, action="store_const", const=True, default=argparse.SUPPRESS,
                            help=help + mark(True))
        target.add_argument(off[0], dest=dest, action="store_const", const=False, default=argparse.SUPPRESS,
                            help=off[1] + mark(False))
        self.defaults[dest] = default
        self.parsers[dest] = parse_bool

    def _add_recipe(self, defaults: Recipe) -> None:
        group = self.parser.add_argument_group("recipe (the same flags for every quantize command, and keys of --config)")
        for option in OPTIONS:
            default = option.value_from(defaults)
            if option.is_switch:
                self.add_switch(option.flag, option.key, default, option.help, off=option.off, group=group)
            else:
                self.add(option.flag, dest=option.key, default=default, type=option.parse, help=option.help,
                         metavar=option.metavar, group=group, none_text=option.none_text)

    def resolve(self, args) -> dict:
        """Defaults, then ``--config FILE`` (if given), then the flags given; every key is a dest."""
        values = dict(self.defaults)
        config_path = getattr(args, "config", None)
        if config_path is not None:
            for key, value in load_config_file(config_path).items():
                if key not in self.defaults:
                    known = sorted(set(self.defaults) - set(NOT_CONFIGURABLE))
                    raise ConfigError(f"unknown configuration key {key!r} in {config_path}; known keys: {known}")
                values[key] = parse_value(key, self.parsers[key], value)
        values.update({key: value for key, value in vars(args).items() if key in self.defaults})
        return values

    def recipe(self, values: dict) -> Recipe:
        """The recipe of resolved ``values`` (validated here, before any work)."""
        return recipe_from_options({key: values[key] for key in OPTIONS_BY_KEY}, self.recipe_defaults)


def _argparse_type(parse):
    """``parse`` for argparse: a ValueError becomes argparse's one-line usage error with our message."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error}, got {text!r}") from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_common_arguments(parser: argparse.ArgumentParser, settings: Settings, *, report_help: str) -> None:
    """``--config``, ``--report``, ``--overwrite``, ``--quiet``, ``--json``, ``--seed``, ``--threads``."""
    group = parser.add_argument_group("run")
    group.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of the flags' keys (flags win)")
    group.add_argument("--report", metavar="FILE", help=report_help)
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("--quiet", action="store_true", help="no progress on stderr")
    group.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of a table")
    settings.add("--seed", dest="seed", default=0, type=parse_int, help="seed of every random choice", metavar="N",
                 group=group)
    settings.add("--threads", dest="threads", default=None, type=parse_optional_int,
                 help="CPU threads for torch, onnxruntime and the solvers (none: their defaults)", metavar="N",
                 group=group)


def require(*modules: str) -> None:
    """ModuleNotFoundError naming the first of ``modules`` that is not installed (checked without importing
    it, so that registering a command stays cheap)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def set_threads(threads: int | None) -> None:
    """Limit torch (if installed) and Numba to ``threads``; onnxruntime sessions take it as a parameter."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)


def layer_table(layers: list[dict], extra_columns: tuple = ()) -> list[str]:
    """Lines of a per-layer table: full layer names (never cut), shape, the errors of RTN and of the
    algorithm on the same grid, time, and ``extra_columns`` ((title, key) pairs) before the errors."""
    name_width = max([len("layer")] + [len(layer["name"]) for layer in layers])
    titles = [title for title, _ in extra_columns]
    widths = [max([len(title)] + [len(str(layer[key])) for layer in layers]) for title, key in extra_columns]
    head = f"{'layer':<{name_width}}  {'shape':<11} " + " ".join(f"{t:<{w}}" for t, w in zip(titles, widths))
    lines = [head.rstrip() + f" {'rel err RTN':>11} {'rel err':>8} {'time s':>7}"]
    for layer in layers:
        shape = "x".join(str(d) for d in layer["shape"])
        extras = " ".join(f"{str(layer[key]):<{w}}" for (_, key), w in zip(extra_columns, widths))
        errors = " ".join(["n/a".rjust(11) if layer["rel_error_rtn"] is None else f"{layer['rel_error_rtn']:>11.4f}",
                           "n/a".rjust(8) if layer["rel_error"] is None else f"{layer['rel_error']:>8.4f}"])
        lines.append(f"{layer['name']:<{name_width}}  {shape:<11} {extras}".rstrip() + f" {errors} {layer['time_s']:>7.2f}")
    notes = [f"  note: {layer['name']}: {layer['note']}" for layer in layers if layer.get("note")]
    dead = [layer for layer in layers if layer.get("dead_columns")]
    if dead:
        notes.append(f"  note: {len(dead)} layer(s) have input columns that were zero on every calibration sample "
                     f"(their weights round to Q(0)): " + ", ".join(f"{l['name']} ({l['dead_columns']})" for l in dead))
    return lines + notes


def emit(summary: dict, lines: list[str], as_json: bool) -> None:
    """Print the summary: ``lines`` (a table) on a terminal, or ``summary`` as one JSON object with --json."""
    print(json.dumps(summary, default=str) if as_json else "\n".join(lines))


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(bits=args.bits, group_size=args.group_size, seed=args.seed)
    return 0


def _commands():
    """(entry points of the command group, sorted by name)."""
    return sorted(importlib.metadata.entry_points(group=COMMAND_GROUP), key=lambda entry: entry.name)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qronos", formatter_class=HelpFormatter,
        description="Post-training quantization as least-squares rounding: RTN, OPTQ/GPTQ, GPFQ, GPTAQ and Qronos "
                    "on ONNX graphs and PyTorch language models. 'qronos COMMAND --help' lists each command's flags; "
                    "the recipe flags are the same for every quantize command.")
    parser.add_argument("--version", action="version", version=f"qronos_linalg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = subparsers.add_parser("demo", help="quantize a synthetic layer with every solver and compare",
                                 formatter_class=HelpFormatter)
    demo.add_argument("--bits", type=int, default=3, help="weight bits (default: 3)")
    demo.add_argument("--group-size", type=int, default=64, help="grid group size (default: 64)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic layer (default: 0)")
    demo.set_defaults(func=_demo)
    unavailable = []
    for entry in _commands():
        try:
            entry.load()(subparsers)  # registering checks the command's dependencies first
        except ModuleNotFoundError as missing:
            extra = ",".join(entry.extras) or entry.name
            unavailable.append(f"{entry.name}: needs {missing.name!r} (pip install 'qronos_linalg[{extra}]')")
    if unavailable:
        parser.epilog = "Commands not available here: " + "; ".join(unavailable)
    return parser


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror and str(error).startswith("["):
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, so that ``finally`` blocks remove temporary outputs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    """Run ``qronos`` with ``argv`` (default: the command line); returns the exit code (``--help`` and
    ``--version``: 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error already printed
        return exit_request.code
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_BAD_INPUT
    with _sigterm_as_interrupt():
        try:
            return args.func(args)
        except (ValueError, OSError, ModuleNotFoundError) as error:
            print(f"qronos {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"qronos {args.command}: interrupted (temporary files removed)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error of the command
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())
