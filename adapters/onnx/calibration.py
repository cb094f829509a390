"""Calibration samples: a list of feed dicts ``{graph input name: array}``, checked against the graph.

Accepted sources: a ``.npz`` file or a dict of arrays (one array per graph input, first axis =
samples; each sample keeps a batch axis of 1), a folder of ONNX-zoo style
``test_data_set_*/input_*.pb`` (one set = one sample), an object with onnxruntime's
``CalibrationDataReader`` protocol (``get_next()`` returns a feed dict, then None), or a list of
feed dicts.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CalibrationError


def graph_inputs(graph: onnx.GraphProto) -> list:
    """The real graph inputs (initializers listed as inputs are excluded)."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def load_calibration(source, graph: onnx.GraphProto, nsamples: int | None = None, seed: int = 0) -> list:
    """Feed dicts from ``source``, at most ``nsamples`` (a seeded random subset of a file or folder)."""
    inputs = graph_inputs(graph)
    if isinstance(source, (str, pathlib.Path)):
        path = pathlib.Path(source)
        if path.is_dir():
            samples = _from_folder(path, inputs)
        elif path.is_file():
            samples = _from_npz(path, inputs)
        else:
            raise CalibrationError(f"calibration path {path} does not exist")
        samples = _subset(samples, nsamples, seed)
    elif isinstance(source, dict):
        samples = _subset(_split_arrays(source, inputs, "the calibration dict"), nsamples, seed)
    elif hasattr(source, "get_next"):
        samples = []
        while nsamples is None or len(samples) < nsamples:
            feed = source.get_next()
            if feed is None:
                break
            samples.append(dict(feed))
    elif isinstance(source, (list, tuple)):
        samples = _subset([dict(s) for s in source], nsamples, seed)
    else:
        raise CalibrationError(
            f"unsupported calibration source of type {type(source).__name__}: give a .npz path, a folder "
            "of test_data_set_*, a dict of arrays, a list of feed dicts or a CalibrationDataReader"
        )
    if not samples:
        raise CalibrationError("calibration source yields no samples")
    vocabularies = index_ranges(graph)
    for index, sample in enumerate(samples):
        check_sample(sample, inputs, f"calibration sample {index}", vocabularies)
    return samples


def index_ranges(graph: onnx.GraphProto) -> dict:
    """``{graph input: rows}`` for integer inputs used as the indices of a Gather over a constant table
    (token ids into an embedding): valid ids are ``0 … rows − 1``."""
    tables = {t.name: t.dims[0] for t in graph.initializer if len(t.dims) >= 1}
    names = {i.name for i in graph_inputs(graph)}
    ranges = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in names and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0:
                ranges[node.input[1]] = min(ranges.get(node.input[1], tables[node.input[0]]), tables[node.input[0]])
    return ranges


def _subset(samples: list, nsamples, seed) -> list:
    if nsamples is None or nsamples >= len(samples):
        return samples
    chosen = np.random.default_rng(seed).choice(len(samples), size=nsamples, replace=False)
    return [samples[i] for i in sorted(chosen)]


def _split_arrays(arrays, inputs, where) -> list:
    names = [i.name for i in inputs]
    _check_names(set(arrays), names, where)
    counts = {name: np.asarray(arrays[name]).shape[0] if np.ndim(arrays[name]) else 0 for name in names}
    if len(set(counts.values())) != 1:
        raise CalibrationError(f"arrays in {where} have different numbers of samples (first axis): {counts}")
    count = counts[names[0]]
    return [{name: np.asarray(arrays[name])[k : k + 1] for name in names} for k in range(count)]


def _from_npz(path, inputs) -> list:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise CalibrationError(f"calibration file {path} is not a readable .npz archive: {error}") from error
    return _split_arrays(arrays, inputs, str(path))


def _from_folder(path, inputs) -> list:
    sets = sorted(p for p in path.glob("test_data_set_*") if p.is_dir())
    if not sets:
        raise CalibrationError(f"calibration folder {path} has no test_data_set_* folders")
    samples = []
    for folder in sets:
        files = sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
        if len(files) != len(inputs):
            raise CalibrationError(f"{folder} has {len(files)} input_*.pb files, the graph has {len(inputs)} inputs")
        sample = {}
        for position, file in enumerate(files):
            tensor = onnx.TensorProto()
            try:
                tensor.ParseFromString(file.read_bytes())
            except Exception as error:
                raise CalibrationError(f"{file} is not a serialized TensorProto: {error}") from error
            sample[tensor.name or inputs[position].name] = numpy_helper.to_array(tensor)
        samples.append(sample)
    return samples


def _check_names(given: set, expected: list, where: str) -> None:
    missing = [n for n in expected if n not in given]
    extra = sorted(given - set(expected))
    if missing or extra:
        raise CalibrationError(
            f"{where} does not match the graph inputs {expected}: missing {missing}, unexpected {extra}"
        )


def check_sample(sample: dict, inputs: list, where: str, row_counts: dict | None = None) -> None:
    """Names, dtypes, ranks and fixed dimensions of one feed dict against the graph inputs; inputs that
    share a named dimension (e.g. ``sequence_length`` of ids and mask) must agree on its size; token ids
    must lie in their embedding's range (``row_counts``: see :func:`index_ranges`)."""
    _check_names(set(sample), [i.name for i in inputs], where)
    named = {}
    for value_info in inputs:
        array = sample[value_info.name]
        if not isinstance(array, np.ndarray):
            raise CalibrationError(f"{where}: input {value_info.name!r} is a {type(array).__name__}, not a NumPy array")
        tensor_type = value_info.type.tensor_type
        expected = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if array.dtype != expected:
            raise CalibrationError(f"{where}: input {value_info.name!r} has dtype {array.dtype}, the graph expects {expected}")
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            mismatch = array.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, array.shape))
            if mismatch:
                shown = ["?" if d is None else d for d in dims]
                raise CalibrationError(
                    f"{where}: input {value_info.name!r} has shape {list(array.shape)}, the graph expects {shown}"
                )
            for dim, size in zip(tensor_type.shape.dim, array.shape):
                if dim.HasField("dim_param") and dim.dim_param:
                    first = named.setdefault(dim.dim_param, (value_info.name, size))
                    if first[1] != size:
                        raise CalibrationError(
                            f"{where}: inputs {first[0]!r} and {value_info.name!r} disagree on dimension "
                            f"{dim.dim_param!r} ({first[1]} vs {size})"
                        )
        rows = (row_counts or {}).get(value_info.name)
        if rows is not None and array.size and (array.min() < 0 or array.max() >= rows):
            raise CalibrationError(
                f"{where}: input {value_info.name!r} indexes a table of {rows} rows, but its values run from "
                f"{array.min()} to {array.max()} (token ids out of vocabulary?)"
            )
