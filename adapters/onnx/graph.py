"""Graph analysis: load a model, fold constant weights, find the quantizable layers.

A layer is one constant weight (an initializer, a Constant node, or a tensor computed from constants
only, which is folded) used as the weight of MatMul (``y = x @ B``, B of shape (in, out), core
``W = Bᵀ``), Gemm (``y = α·op(A)·op(B) + β·C``) or 2-D Conv (weight (out, in/groups, kh, kw) viewed as
out × (in/groups·kh·kw)). A weight shared by several such nodes is one layer, quantized once.
"""

from __future__ import annotations

import dataclasses
import heapq
import pathlib
import re

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InvalidModelError

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")
CONV_SPATIAL_DIMS = 2


@dataclasses.dataclass
class Consumer:
    """One node that uses a layer's weight, and how its input maps to the core's X (rows × in)."""

    node_index: int
    node_name: str
    output: str  # first output name: identifies the node across graph copies
    op: str
    activation: str  # name of the activation input
    transposed: bool  # core W is the ONNX weight (Gemm transB=1, Conv) rather than its transpose
    attributes: dict


@dataclasses.dataclass
class Layer:
    """A constant weight and the nodes that use it; W = core-layout float weights (out × in)."""

    name: str
    op: str
    weight_name: str
    weight: np.ndarray  # ONNX layout
    consumers: list
    groups: int = 1

    @property
    def out_features(self) -> int:
        return self.core_weight().shape[0]

    @property
    def in_features(self) -> int:
        """Columns of one group's W (Conv: in/groups · kh · kw)."""
        return self.core_weight().shape[1]

    def core_weight(self) -> np.ndarray:
        """W (out × in) in the core convention."""
        if self.op == "Conv":
            return self.weight.reshape(self.weight.shape[0], -1)
        return self.weight if self.consumers[0].transposed else self.weight.T

    def to_onnx_layout(self, W: np.ndarray) -> np.ndarray:
        """Inverse of ``core_weight``: a core-layout matrix in the ONNX weight's layout and dtype."""
        if self.op == "Conv":
            out = W.reshape(self.weight.shape)
        else:
            out = W if self.consumers[0].transposed else W.T
        return np.ascontiguousarray(out, dtype=self.weight.dtype)


@dataclasses.dataclass
class Skipped:
    name: str
    op: str
    reason: str


def load_model(model_or_path) -> onnx.ModelProto:
    """Load and check a model (path or ModelProto); a clear InvalidModelError if it is not valid ONNX."""
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
        where = "the given ModelProto"
    else:
        path = pathlib.Path(model_or_path)
        where = str(path)
        if not path.is_file():
            raise InvalidModelError(f"model file {path} does not exist")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf raises several unrelated types on garbage input
            raise InvalidModelError(f"{path} is not a valid ONNX model (cannot parse it: {error})") from error
    if not model.graph.node:
        raise InvalidModelError(f"{where} is not a valid ONNX model: its graph has no nodes")
    try:  # a path is checked from the file, which also works above protobuf's 2 GB limit
        onnx.checker.check_model(model if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path))
    except onnx.checker.ValidationError as error:
        raise InvalidModelError(f"{where} is not a valid ONNX model: {error}") from error
    return model


def subgraph_inputs(node: onnx.NodeProto) -> set:
    """Outer-scope names a node's subgraphs (If/Loop/Scan bodies) read."""
    names = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in graphs:
            local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                local.update(inner.output)
            for inner in graph.node:
                names.update(n for n in list(inner.input) + list(subgraph_inputs(inner)) if n and n not in local)
    return names


def node_inputs(node: onnx.NodeProto) -> list:
    """All tensor names a node reads (its inputs and outer-scope names of its subgraphs)."""
    return [n for n in node.input if n] + sorted(subgraph_inputs(node))


def topological_nodes(graph: onnx.GraphProto) -> list:
    """The graph's nodes in a topological order that runs MatMul/Gemm/Conv as late as possible.

    Among the nodes ready to run, the others go first (ties keep the file order), so that when a
    weight shared by several nodes is reached, as many of their inputs as possible exist already.
    """
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [set() for _ in nodes]
    users = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for name in node_inputs(node):
            if name in producer and producer[name] != i:
                waiting_on[i].add(producer[name])
    for i, parents in enumerate(waiting_on):
        for parent in parents:
            users[parent].append(i)
    delayed = [node.op_type in QUANTIZABLE_OPS for node in nodes]
    ready = [(delayed[i], i) for i, parents in enumerate(waiting_on) if not parents]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for user in users[i]:
            waiting_on[user].discard(i)
            if not waiting_on[user]:
                heapq.heappush(ready, (delayed[user], user))
    if len(ordered) != len(nodes):
        raise InvalidModelError("graph has a cycle: some nodes depend on their own outputs")
    return ordered


class ConstantFolder:
    """Values of tensors computable from constants only (initializers, Constant nodes and their functions)."""

    def __init__(self, graph: onnx.GraphProto, nodes: list, opset_imports):
        graph_inputs = {i.name for i in graph.input}
        self._values = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
        self._producer = {out: node for node in nodes for out in node.output}
        self._opset_imports = list(opset_imports)
        self._cache = {}

    def value(self, name: str):
        """The constant value of ``name`` as a NumPy array, or None if it depends on a graph input."""
        if name in self._cache:
            return self._cache[name]
        result = None
        if name in self._values:
            result = numpy_helper.to_array(self._values[name])
        elif name in self._producer:
            result = self._evaluate(self._producer[name], name)
        self._cache[name] = result
        return result

    def _evaluate(self, node, name):
        if node.domain not in ("", "ai.onnx") or subgraph_inputs(node) or node.op_type in NONDETERMINISTIC_OPS:
            return None
        inputs = [n for n in node.input if n]
        values = [self.value(n) for n in inputs]
        if any(v is None for v in values):
            return None
        from onnx.reference import ReferenceEvaluator

        single = onnx.helper.make_graph(
            [node], "fold", [onnx.helper.make_tensor_value_info(n, 0, None) for n in inputs],
            [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output],
        )
        model = onnx.helper.make_model(single, opset_imports=self._opset_imports)
        outputs = ReferenceEvaluator(model).run(None, dict(zip(inputs, values)))
        return outputs[list(node.output).index(name)]


NONDETERMINISTIC_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial")


def _attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _classify(node, index, folder):
    """(weight name, weight array, Consumer) for a quantizable node, or a skip reason string."""
    attributes = {k: _decode(v) for k, v in _attributes(node).items()}
    name = node.name or f"{node.op_type}_{index}"
    if node.op_type == "MatMul":
        activation, weight_name = node.input[0], node.input[1]
        transposed = False
    elif node.op_type == "Gemm":
        activation, weight_name = node.input[0], node.input[1]
        transposed = bool(attributes.get("transB", 0))
    else:
        activation, weight_name = node.input[0], node.input[1]
        transposed = True
    weight = folder.value(weight_name)
    if weight is None:
        if folder.value(activation) is not None:
            return "the constant is the left operand, not the weight"
        return "weight is not constant (computed from graph inputs)"
    if folder.value(activation) is not None:
        return "both operands are constant"
    if weight.dtype not in (np.float32, np.float16, np.float64):
        return f"weight dtype {weight.dtype} is not floating point"
    if node.op_type == "Conv":
        if weight.ndim != CONV_SPATIAL_DIMS + 2:
            return f"Conv with {weight.ndim - 2} spatial dimensions (only 2-D Conv is supported)"
    elif weight.ndim != 2:
        return f"weight has {weight.ndim} dimensions (only 2-D weights are quantized)"
    if not np.all(np.isfinite(weight)):
        return "weight contains non-finite values"
    consumer = Consumer(index, name, node.output[0], node.op_type, activation, transposed, attributes)
    return weight_name, weight, consumer


def find_layers(model: onnx.ModelProto, nodes: list, include: str | None = None, exclude: str | None = None):
    """(layers in topological order of their first use, skipped nodes with reasons).

    ``include``/``exclude`` are regular expressions searched in node names.
    """
    folder = ConstantFolder(model.graph, nodes, model.opset_import)
    include_re = re.compile(include) if include else None
    exclude_re = re.compile(exclude) if exclude else None
    by_weight, skipped = {}, []
    for index, node in enumerate(nodes):
        if node.op_type not in QUANTIZABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        if include_re and not include_re.search(name):
            skipped.append(Skipped(name, node.op_type, "not matched by --include"))
            continue
        if exclude_re and exclude_re.search(name):
            skipped.append(Skipped(name, node.op_type, "matched by --exclude"))
            continue
        found = _classify(node, index, folder)
        if isinstance(found, str):
            skipped.append(Skipped(name, node.op_type, found))
            continue
        weight_name, weight, consumer = found
        by_weight.setdefault(weight_name, []).append((weight, consumer))
    layers = []
    for weight_name, uses in by_weight.items():
        weight, first = uses[0]
        reason = _sharing_conflict(uses)
        if reason:
            skipped.extend(Skipped(c.node_name, c.op, reason) for _, c in uses)
            continue
        groups = int(first.attributes.get("group", 1)) if first.op == "Conv" else 1
        layers.append(Layer(first.node_name, first.op, weight_name, weight, [c for _, c in uses], groups))
    layers.sort(key=lambda layer: layer.consumers[0].node_index)
    return layers, skipped


def _sharing_conflict(uses) -> str | None:
    first = uses[0][1]
    for _, other in uses[1:]:
        if other.op != first.op or other.transposed != first.transposed:
            return "weight shared by nodes that use it in different layouts"
        if first.op == "Conv" and other.attributes.get("group", 1) != first.attributes.get("group", 1):
            return "weight shared by Conv nodes with different groups"
    return None


def unique_name(base: str, taken: set) -> str:
    """``base`` or ``base_1``, ``base_2``, ... whichever is not in ``taken`` (then added to it)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def with_weights_as_initializers(model: onnx.ModelProto, nodes: list, layers: list) -> onnx.ModelProto:
    """Copy of the model, nodes in topological order, each layer's weight a plain initializer.

    Folded weights, and weights also read by other nodes (e.g. a tied embedding's Gather, or an
    excluded MatMul), get a new initializer of their own, so that only the layer's nodes see the
    quantized values; nodes left without users are removed. Updates ``layer.weight_name`` and the consumers'
    ``node_index`` in place.
    """
    working = onnx.ModelProto()
    working.CopyFrom(model)
    graph = working.graph
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = {t.name for t in graph.initializer}
    taken = all_names(graph)
    for layer in layers:
        consumers = {c.node_index for c in layer.consumers}
        other_users = [n for i, n in enumerate(graph.node) if i not in consumers and layer.weight_name in node_inputs(n)]
        if layer.weight_name in initializers and not other_users:
            continue
        new_name = unique_name(f"{layer.weight_name}_layer", taken)
        graph.initializer.append(numpy_helper.from_array(layer.weight, new_name))
        for consumer in layer.consumers:
            graph.node[consumer.node_index].input[1] = new_name
        layer.weight_name = new_name
    remove_dead_nodes(graph)
    index_of = {node.output[0]: i for i, node in enumerate(graph.node)}
    for layer in layers:
        for consumer in layer.consumers:
            consumer.node_index = index_of[consumer.output]
    return working


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody uses (order kept)."""
    while True:
        used = {o.name for o in graph.output}
        for node in graph.node:
            used.update(node_inputs(node))
        dead = [i for i, node in enumerate(graph.node) if not any(o in used for o in node.output if o)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
