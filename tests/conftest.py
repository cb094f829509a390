"""Shared test configuration.

Test modules of an adapter are collected only when its optional dependencies are installed, so that the
NumPy core's tests run after ``pip install ".[test]"`` alone; the header of the run names what was left
out and why. Tests of the core that also check torch tensors take the ``torch`` fixture, which skips
them without torch. Builders shared by several modules live beside this file (``_torch_tiny.py``,
``onnx_graph_builders.py``, ``onnx_reference.py``, ``solver_problems.py``).
"""

import importlib.util

import pytest

#: Test-file patterns → the modules they need.
NEEDS = {
    "test_torch_*.py": ("torch", "transformers", "safetensors"),
    "test_onnx_*.py": ("onnx", "onnxruntime"),
}


def _missing(modules) -> list:
    return [name for name in modules if importlib.util.find_spec(name) is None]


collect_ignore_glob = [pattern for pattern, modules in NEEDS.items() if _missing(modules)]


def pytest_report_header(config):
    left_out = [f"{pattern} (needs {', '.join(_missing(modules))})" for pattern, modules in NEEDS.items()
                if _missing(modules)]
    return [f"not collected, optional dependencies missing: {'; '.join(left_out)}"] if left_out else []


@pytest.fixture(scope="session")
def torch():
    """The torch module; the test is skipped where torch is not installed."""
    return pytest.importorskip("torch")
