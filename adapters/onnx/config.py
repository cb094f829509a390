"""Quantization settings shared by the library API, the CLI and --config files."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from qronos_linalg.solvers import DEFAULT_DAMP as SOLVER_DAMP

from .errors import ConfigError

ALGORITHMS = ("rtn", "optq", "gpfq", "gptaq", "qronos")
FORMATS = ("qdq", "matmulnbits")
SEARCHES = ("minmax", "mse")
# Relative damping per algorithm when none is given (the solvers' own defaults; RTN and GPFQ have none).
DEFAULT_DAMP = {"rtn": 0.0, "optq": SOLVER_DAMP, "gpfq": 0.0, "gptaq": SOLVER_DAMP, "qronos": SOLVER_DAMP}
MAX_BITS = 8


@dataclasses.dataclass
class QuantConfig:
    """All options of ``qronos quantize`` (same names as the CLI flags, with ``_`` for ``-``)."""

    algo: str = "qronos"
    bits: int = 4
    group_size: int | None = 32
    sym: bool = False
    act_order: bool = False
    damp: float | None = None
    block_size: int = 128
    shrink: float = 1.0
    mse: bool = False
    act_bits: int | None = None
    format: str = "matmulnbits"
    accuracy_level: int | None = None
    nsamples: int | None = None
    seed: int = 0
    include: str | None = None
    exclude: str | None = None
    external_data: bool | None = None

    def __post_init__(self):
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {ALGORITHMS}, got {self.algo!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.format!r}")
        if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be an integer in [1, {MAX_BITS}], got {self.bits!r}")
        if self.act_bits is not None and (not isinstance(self.act_bits, int) or not 2 <= self.act_bits <= MAX_BITS):
            raise ConfigError(f"act_bits must be an integer in [2, {MAX_BITS}] or None, got {self.act_bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"group_size must be a positive integer or None (per channel), got {self.group_size!r}")
        if self.damp is not None and not self.damp >= 0:
            raise ConfigError(f"damp must be >= 0, got {self.damp!r}")
        if not 0 < self.shrink <= 1:
            raise ConfigError(f"shrink must be in (0, 1], got {self.shrink!r}")
        if self.nsamples is not None and self.nsamples < 1:
            raise ConfigError(f"nsamples must be positive, got {self.nsamples!r}")

    @property
    def damping(self) -> float:
        """Relative damping for the chosen algorithm (explicit ``damp`` or the algorithm's default)."""
        return DEFAULT_DAMP[self.algo] if self.damp is None else self.damp

    @classmethod
    def from_mapping(cls, mapping: dict) -> "QuantConfig":
        """Build from a dict (keys as in a config file; ``-`` and ``_`` both accepted)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise ConfigError(f"unknown configuration key {key!r}; known keys: {sorted(fields)}")
            values[name] = value
        return cls(**values)


def load_config_file(path) -> dict:
    """Read a YAML (.yaml/.yml) or JSON config file into a dict of options."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return data
