"""Settings of the ONNX adapter: the shared recipe plus the output format and the graph selection.

The recipe keys (``algo``, ``bits``, ``group_size``, ``sym``, …; :mod:`qronos_linalg.options`) and the
keys below are the CLI flags' names; a config file or dict may spell them with ``-`` or ``_``.
"""

from __future__ import annotations

import dataclasses
import re

from qronos_linalg.options import (OPTIONS_BY_KEY, ConfigError, normalize_key, parse_bool, parse_int, parse_value,
                                   recipe_from_options, recipe_to_options)
from qronos_linalg.recipe import GridSpec, Recipe, SolverSpec, algorithms_using

FORMATS = ("qdq", "matmulnbits")
#: The algorithms this adapter can run: those needing only the input statistics H and G (not YAQA, whose
#: output factor comes from gradients of a language model's loss: `qronos quantize-lm --algo yaqa`).
ALGORITHMS = algorithms_using(("H", "G"))
#: The adapter's default recipe: Qronos on a 4-bit asymmetric grid with groups of 32 (a MatMulNBits block).
DEFAULT_RECIPE = Recipe(GridSpec(bits=4, group_size=32), SolverSpec(algorithm="qronos"))
#: MatMulNBits ``accuracy_level`` attribute values.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """All settings of ``qronos quantize``: ``recipe`` and the ONNX-specific options (same names as the CLI
    flags, with ``_`` for ``-``)."""

    recipe: Recipe = DEFAULT_RECIPE
    format: str = "matmulnbits"
    accuracy_level: int | None = None
    nsamples: int | None = None
    seed: int = 0
    include: str | None = None
    exclude: str | None = None
    external_data: bool | None = None

    def __post_init__(self):
        if not isinstance(self.recipe, Recipe):
            raise ConfigError(f"recipe must be a Recipe, got {type(self.recipe).__name__}")
        if self.recipe.solver.algorithm not in ALGORITHMS:
            algorithm = self.recipe.solver.algorithm
            raise ConfigError(f"the ONNX adapter runs {', '.join(ALGORITHMS)}; {algorithm} needs gradients of a "
                              f"language model's loss (qronos quantize-lm --algo {algorithm})")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.accuracy_level is not None and self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(f"accuracy_level must be one of {ACCURACY_LEVELS} or None, got {self.accuracy_level!r}")
        if self.nsamples is not None and (not isinstance(self.nsamples, int) or isinstance(self.nsamples, bool)
                                          or self.nsamples < 1):
            raise ConfigError(f"nsamples must be a positive integer or None (all), got {self.nsamples!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ConfigError(f"{name} is not a valid regular expression ({pattern!r}): {error}") from None

    @classmethod
    def from_mapping(cls, mapping: dict, base: "QuantConfig | None" = None) -> "QuantConfig":
        """``base`` (default: the defaults) with a dict's keys applied: recipe keys and the fields above."""
        base = base or cls()
        own = {f.name: f for f in dataclasses.fields(cls) if f.name != "recipe"}
        recipe_keys, values = {}, {}
        for key, value in mapping.items():
            name = normalize_key(key)
            if name in OPTIONS_BY_KEY:
                recipe_keys[name] = value
            elif name in own:
                values[name] = parse_value(name, OWN_PARSERS.get(name, str), value)
            else:
                raise ConfigError(f"unknown configuration key {key!r}; known keys: "
                                  f"{sorted(set(OPTIONS_BY_KEY) | set(own))}")
        return dataclasses.replace(base, recipe=recipe_from_options(recipe_keys, base.recipe), **values)

    def to_dict(self) -> dict:
        """Flat options (recipe keys, the solver's defaults filled in, and the fields above), as a config file
        would hold them."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "recipe"}
        return {**recipe_to_options(self.recipe.resolved()), **own}


#: Text parsers of the adapter's own keys (for config-file strings; flags arrive parsed).
OWN_PARSERS = {"accuracy_level": parse_int, "nsamples": parse_int, "seed": parse_int, "external_data": parse_bool}
