"""Stage-by-stage execution of the float and the partially quantized graph (two streams).

The nodes (topological order) are cut before every node that uses a quantized weight. Stage ``j``
runs the nodes between cut ``j`` and cut ``j + 1`` with onnxruntime, once per stream and calibration
sample; only tensors read by later stages are carried forward. Each node therefore runs once per
stream, so the total work grows linearly with the depth of the graph.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .graph import loaded_tensor, node_inputs

ORT_LOG_ERRORS_ONLY = 3


@dataclasses.dataclass
class Stage:
    """Nodes to run, the quantized node that starts the stage (None for the prefix), carried names."""

    nodes: list
    start_node: int | None
    keep_after: set  # tensor names still needed once this stage has run


def plan_stages(graph: onnx.GraphProto, cut_nodes: list, activations: dict) -> list:
    """Stages cut before each node index in ``cut_nodes``.

    ``activations`` maps a cut node index to the activation input name captured there. Only the
    nodes that some later activation depends on are kept.
    """
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    required, stack = set(), [producer[a] for a in activations.values() if a in producer]
    while stack:
        index = stack.pop()
        if index in required:
            continue
        required.add(index)
        stack.extend(producer[n] for n in node_inputs(nodes[index]) if n in producer)
    cuts = sorted(set(cut_nodes))
    bounds = [0] + cuts + [len(nodes)]
    stages = [
        Stage([i for i in range(lo, hi) if i in required], bounds[k] if k else None, set())
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    constants = {t.name for t in graph.initializer}
    needed = set()
    for stage in reversed(stages):
        stage.keep_after = set(needed)
        produced = {out for i in stage.nodes for out in nodes[i].output}
        needed.difference_update(produced)
        for i in stage.nodes:
            needed.update(n for n in node_inputs(nodes[i]) if n not in constants and n not in produced)
        if stage.start_node is not None:
            needed.add(activations[stage.start_node])
    return stages


class StreamInitializers(Mapping):
    """One stream's initializers, name → TensorProto, each produced when a stage session is built and then
    dropped: a tensor with external data is read from ``base_dir`` (:func:`~.graph.loaded_tensor`), and
    :meth:`replace` gives a name the stream's own tensor (a quantized weight, made on demand)."""

    def __init__(self, tensors: dict, base_dir: pathlib.Path | None):
        self._tensors = tensors
        self._base_dir = base_dir
        self._replacements: dict[str, Callable[[], onnx.TensorProto]] = {}

    def replace(self, name: str, make: Callable[[], onnx.TensorProto]) -> None:
        self._replacements[name] = make

    def copy(self) -> "StreamInitializers":
        other = StreamInitializers(self._tensors, self._base_dir)
        other._replacements = dict(self._replacements)
        return other

    def __getitem__(self, name: str) -> onnx.TensorProto:
        if name in self._replacements:
            return self._replacements[name]()
        return loaded_tensor(self._tensors[name], self._base_dir)

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime options of every session the adapter opens: errors-only logging, no spinning idle
    threads (they would steal the cores from the solvers' BLAS), and ``threads`` if given."""
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_ERRORS_ONLY
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return options


def _value_info_for(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor_value_info(name, elem_type, [None] * array.ndim)


class StageRunner:
    """Runs one stage's nodes on feed dicts with a given set of initializers."""

    def __init__(self, model: onnx.ModelProto, stage: Stage, initializers: dict, example: dict,
                 replaced_inputs: dict | None = None, *, threads: int | None = None):
        """``initializers``: name → TensorProto for the whole graph (already with this stream's weights; a
        :class:`StreamInitializers` reads only this stage's).

        ``example``: a carried feed dict (gives input dtypes). ``replaced_inputs``: node index → {old
        input name: new input name}, used to feed fake-quantized activations to quantized nodes.
        ``threads``: onnxruntime's intra- and inter-op thread counts (None: its defaults).
        """
        graph = model.graph
        replaced_inputs = replaced_inputs or {}
        nodes = []
        for index in stage.nodes:
            node = onnx.NodeProto()
            node.CopyFrom(graph.node[index])
            for position, name in enumerate(node.input):
                node.input[position] = replaced_inputs.get(index, {}).get(name, name)
            nodes.append(node)
        produced = {out for node in nodes for out in node.output}
        read = []
        for node in nodes:
            read.extend(n for n in node_inputs(node) if n not in produced and n not in read)
        self.input_names = [n for n in read if n not in initializers]
        missing = [n for n in self.input_names if n not in example]
        if missing:
            raise RuntimeError(f"internal error: stage inputs {missing} were not carried")
        self.output_names = sorted(produced & stage.keep_after)
        stage_graph = helper.make_graph(
            nodes,
            "stage",
            [_value_info_for(n, example[n]) for n in self.input_names],
            [onnx.ValueInfoProto(name=n) for n in self.output_names],
            initializer=[initializers[n] for n in read if n in initializers],
        )
        stage_model = helper.make_model(
            stage_graph, opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions
        )
        options = session_options(threads)
        self.session = ort.InferenceSession(
            stage_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        ) if self.output_names else None

    def run(self, carried: dict, keep_after: set) -> dict:
        """Carried tensors after this stage: the still-needed old ones plus the new outputs."""
        result = {n: v for n, v in carried.items() if n in keep_after}
        if self.session is not None:
            outputs = self.session.run(self.output_names, {n: carried[n] for n in self.input_names})
            result.update(zip(self.output_names, outputs))
        return result
