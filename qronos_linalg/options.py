"""The one vocabulary of recipe options, shared by both CLIs, config files and the adapters' dict configs.

Each :class:`Option` is a flat key (``bits``, ``group_size``, ``sym``, …), spelled ``--group-size`` as a
flag and ``group_size`` or ``group-size`` in a YAML/JSON config file, with one parser used for flag text
and for config-file strings alike (so YAML's ``damp: 1e-2``, read as a string, is the number 0.01).
:func:`recipe_from_options` applies a mapping of such keys to a base :class:`~qronos_linalg.recipe.Recipe`;
the specs validate the values, once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass
from typing import Callable

from .activations import ACT_BITS
from .grid import SCALE_DTYPES
from .linalg import DAMP_MODES
from .recipe import ALGORITHMS, Recipe

#: Words that mean "per channel" (group_size None) on the command line and in config files.
PER_CHANNEL_WORDS = ("none", "channel", "per-channel")
#: Words that mean "the solver's default damping" (damp None).
DEFAULT_WORDS = ("default", "none")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


class ConfigError(ValueError):
    """An unknown option key, or a value that cannot be parsed or is out of range."""


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be an integer") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number") from None


def parse_group_size(text: str) -> int | None:
    """A positive integer, or one of PER_CHANNEL_WORDS for per channel (None)."""
    if text.strip().lower() in PER_CHANNEL_WORDS:
        return None
    return parse_int(text)


def parse_damp(text: str) -> float | None:
    """A number, or one of DEFAULT_WORDS for the solver's default (None)."""
    if text.strip().lower() in DEFAULT_WORDS:
        return None
    return parse_float(text)


def parse_optional_int(text: str) -> int | None:
    """An integer, or "none"."""
    return None if text.strip().lower() == "none" else parse_int(text)


def parse_optional_float(text: str) -> float | None:
    """A number, or "none"."""
    return None if text.strip().lower() == "none" else parse_float(text)


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("must be true or false")


def parse_switch(text: str) -> bool | None:
    """true/false, or one of DEFAULT_WORDS for the solver's default (None)."""
    return None if text.strip().lower() in DEFAULT_WORDS else parse_bool(text)


def parse_choice(choices: tuple) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {choices}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """A recipe option: ``key`` (flag ``--key`` with ``-``), the ``part`` and ``field`` of the Recipe it
    sets, a ``parse`` function for text, and ``to_field`` / ``from_field`` where the option's value is not
    the field's (``mse`` ↔ ``search``)."""

    key: str
    part: str  # "grid", "solver" or "recipe"
    field: str
    parse: Callable[[str], object]
    help: str
    metavar: str | None = None
    off: tuple[str, str] | None = None  # a switch's (flag, help) that sets it False
    none_text: str = "none"  # how a None default reads in --help
    to_field: Callable[[object], object] = lambda value: value
    from_field: Callable[[object], object] = lambda value: value

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.parse in (parse_bool, parse_switch)

    def value_from(self, recipe: Recipe):
        holder = recipe if self.part == "recipe" else getattr(recipe, self.part)
        return self.from_field(getattr(holder, self.field))


OPTIONS = (
    Option("algo", "solver", "algorithm", parse_choice(ALGORITHMS), "rounding algorithm", "{" + ",".join(ALGORITHMS) + "}"),
    Option("bits", "grid", "bits", parse_int, "weight bits (2-8)", "B"),
    Option("group_size", "grid", "group_size", parse_group_size,
           "input columns per grid group, or 'none' for one group per output channel", "G|none"),
    Option("sym", "grid", "symmetric", parse_bool, "symmetric grid (zero point 2^(bits-1))",
           off=("--asym", "asymmetric grid (zero point from the range)")),
    Option("shrink", "grid", "shrink", parse_float, "β of scaled min-max: the range is β·[min, max], β in (0, 1]", "β"),
    Option("mse", "grid", "search", parse_bool, "per-group search of β minimising ‖w − Q(w)‖² instead of min-max",
           off=("--no-mse", "plain min-max range"), to_field=lambda value: "mse" if value else "minmax", from_field=lambda search: search == "mse"),
    Option("scale_dtype", "grid", "scale_dtype", lambda text: None if text.strip().lower() == "none" else
           parse_choice(SCALE_DTYPES)(text), "freeze the grid's scales in this dtype before rounding (what an export "
           "stores; none: the weights' dtype)", "{" + ",".join(SCALE_DTYPES) + ",none}"),
    Option("damp", "solver", "damp", parse_damp,
           "damping coefficient (see --damp-mode), or 'default' for the solver's own (OPTQ, GPTAQ, Qronos)", "D",
           none_text="the solver's"),
    Option("damp_mode", "solver", "damp_mode",
           lambda text: None if text.strip().lower() in DEFAULT_WORDS else parse_choice(DAMP_MODES)(text),
           "what damp multiplies: 'relative' = mean(diag H) (GPTQ), 'spectral' = σ_max(H) (Brevitas' Qronos); "
           "'default': the solver's", "{" + ",".join(DAMP_MODES) + ",default}", none_text="the solver's"),
    Option("block_size", "solver", "block_size", parse_int, "columns per block of the blocked solvers", "B"),
    Option("act_order", "solver", "act_order", parse_switch,
           "process columns by decreasing diag(H) (act-order; default: the solver's, docs/cli.md)",
           off=("--no-act-order", "process columns in their natural order")),
    Option("gptaq_alpha", "solver", "gptaq_alpha", parse_float, "GPTAQ's α (weight of the asymmetric term)", "α"),
    Option("magr", "solver", "magr_alpha", parse_optional_float,
           "MagR weight magnitude reduction with this α before the grid is fitted (none: off)", "α"),
    Option("act_bits", "recipe", "act_bits", parse_optional_int,
           f"per-token dynamic asymmetric activation quantization of the quantized layers' inputs "
           f"({ACT_BITS[0]}-{ACT_BITS[-1]} bits, none: off)", "B"),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


def normalize_key(key) -> str:
    return str(key).strip().replace("-", "_")


def parse_value(key: str, parse: Callable[[str], object], value):
    """A config file's (or dict's) value for option ``key``: text is parsed, other values pass through
    (the specs check their types and ranges); ConfigError naming the key if the text does not parse."""
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError as error:
            raise ConfigError(f"{key} {error}, got {value!r}") from None
    return value


def recipe_from_options(options: dict, base: Recipe = Recipe()) -> Recipe:
    """``base`` with the recipe options in ``options`` (flat keys) applied; ConfigError on a bad value."""
    parts = {"grid": {}, "solver": {}, "recipe": {}}
    for key, value in options.items():
        option = OPTIONS_BY_KEY.get(normalize_key(key))
        if option is None:
            raise ConfigError(f"unknown recipe option {key!r}; known: {sorted(OPTIONS_BY_KEY)}")
        parts[option.part][option.field] = option.to_field(parse_value(option.key, option.parse, value))
    try:
        return dataclasses.replace(
            base,
            grid=dataclasses.replace(base.grid, **parts["grid"]),
            solver=dataclasses.replace(base.solver, **parts["solver"]),
            **parts["recipe"],
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def recipe_to_options(recipe: Recipe) -> dict:
    """The flat options of ``recipe`` (inverse of :func:`recipe_from_options`)."""
    return {option.key: option.value_from(recipe) for option in OPTIONS}


def load_config_file(path) -> dict:
    """Read a YAML (.yaml/.yml) or JSON config file into a dict of options (keys normalized to ``_``)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise ConfigError(f"config file {path} is YAML, which needs PyYAML: pip install pyyaml") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return {normalize_key(key): value for key, value in data.items()}
