"""Graph analysis: load a model, fold constant weights, find the quantizable layers.

A layer is one constant weight (an initializer, a Constant node, or a tensor computed from constants
only, which is folded) used as the weight of MatMul (``y = x @ B``, B of shape (in, out), core
``W = Bᵀ``), Gemm (``y = α·op(A)·op(B) + β·C``) or 2-D Conv (weight (out, in/groups, kh, kw) viewed as
out × (in/groups·kh·kw)). A weight shared by several such nodes is one layer, quantized once.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import pathlib
import re
from collections.abc import Callable

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

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
    """A constant weight and the nodes that use it; W = core-layout float weights (out × in).

    The weight is read when needed (``weight``), not kept: a model with external data then holds one
    layer's weight at a time. ``shape`` and ``dtype`` are the ONNX weight's.
    """

    name: str
    op: str
    weight_name: str
    read_weight: Callable[[], np.ndarray]  # ONNX layout
    shape: tuple
    dtype: np.dtype
    consumers: list
    groups: int = 1

    @property
    def weight(self) -> np.ndarray:
        """The float weight in its ONNX layout (read on each access)."""
        return self.read_weight()

    @property
    def out_features(self) -> int:
        if self.op == "Conv":
            return self.shape[0]
        return self.shape[0] if self.consumers[0].transposed else self.shape[1]

    @property
    def in_features(self) -> int:
        """Columns of one group's W (Conv: in/groups · kh · kw)."""
        if self.op == "Conv":
            return int(np.prod(self.shape[1:]))
        return self.shape[1] if self.consumers[0].transposed else self.shape[0]

    def core_weight(self) -> np.ndarray:
        """W (out × in) in the core convention."""
        weight = self.weight
        if self.op == "Conv":
            return weight.reshape(weight.shape[0], -1)
        return weight if self.consumers[0].transposed else weight.T

    def to_onnx_layout(self, W: np.ndarray) -> np.ndarray:
        """Inverse of ``core_weight``: a core-layout matrix in the ONNX weight's layout and dtype."""
        if self.op == "Conv":
            out = W.reshape(self.shape)
        else:
            out = W if self.consumers[0].transposed else W.T
        return np.ascontiguousarray(out, dtype=self.dtype)


@dataclasses.dataclass
class Skipped:
    name: str
    op: str
    reason: str


def load_model(model_or_path) -> onnx.ModelProto:
    """Load and check a model (path or ModelProto); a clear InvalidModelError if it is not valid ONNX.

    A file's external data is not read: its tensors keep their references (relative to the file's folder,
    see :func:`external_base`), and :func:`loaded_tensor` reads one tensor when it is needed.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
        where = "the given ModelProto"
    else:
        path = pathlib.Path(model_or_path)
        where = str(path)
        if not path.is_file():
            raise InvalidModelError(f"model file {path} does not exist")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf raises several unrelated types on garbage input
            raise InvalidModelError(f"{path} is not a valid ONNX model (cannot parse it: {error})") from error
    if not model.graph.node:
        raise InvalidModelError(f"{where} is not a valid ONNX model: its graph has no nodes")
    try:  # a path is checked from the file, which also works above protobuf's 2 GB limit
        onnx.checker.check_model(model if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path))
    except onnx.checker.ValidationError as error:
        raise InvalidModelError(f"{where} is not a valid ONNX model: {error}") from error
    return model


def external_base(model_or_path) -> pathlib.Path | None:
    """The folder that a loaded file's external-data references are relative to (None for a ModelProto)."""
    return None if isinstance(model_or_path, onnx.ModelProto) else pathlib.Path(model_or_path).parent


def loaded_tensor(tensor: onnx.TensorProto, base_dir: pathlib.Path | None) -> onnx.TensorProto:
    """``tensor`` itself if it holds its data, else a copy with its external data read from ``base_dir``."""
    if not external_data_helper.uses_external_data(tensor):
        return tensor
    if base_dir is None:
        raise InvalidModelError(f"tensor {tensor.name!r} refers to external data, but the model was given in "
                                "memory: load it with onnx.load (which reads the data) or pass its path")
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    try:
        external_data_helper.load_external_data_for_tensor(copy, str(base_dir))
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"cannot read the external data of tensor {tensor.name!r} from {base_dir}: "
                                f"{error}") from error
    copy.data_location = onnx.TensorProto.DEFAULT
    del copy.external_data[:]
    return copy


def tensor_array(tensor: onnx.TensorProto, base_dir: pathlib.Path | None) -> np.ndarray:
    return numpy_helper.to_array(loaded_tensor(tensor, base_dir))


def load_all_external_data(model: onnx.ModelProto, base_dir: pathlib.Path | None) -> None:
    """Read every tensor's external data into ``model`` (in place): the model then stands alone."""
    for position, tensor in enumerate(model.graph.initializer):
        if external_data_helper.uses_external_data(tensor):
            model.graph.initializer[position].CopyFrom(loaded_tensor(tensor, base_dir))


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

    def __init__(self, graph: onnx.GraphProto, nodes: list, opset_imports, base_dir: pathlib.Path | None = None):
        graph_inputs = {i.name for i in graph.input}
        self._values = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
        self._producer = {out: node for node in nodes for out in node.output}
        self._opset_imports = list(opset_imports)
        self._base_dir = base_dir
        self._cache = {}

    def value(self, name: str):
        """The constant value of ``name`` as a NumPy array, or None if it depends on a graph input.
        Initializers are read on each call (not kept); values computed by folding are kept."""
        if name in self._values:
            return tensor_array(self._values[name], self._base_dir)
        if name in self._cache:
            return self._cache[name]
        result = self._evaluate(self._producer[name], name) if name in self._producer else None
        self._cache[name] = result
        return result

    def is_constant(self, name: str) -> bool:
        """Whether ``name`` is computable from constants (without reading an initializer's data)."""
        return name in self._values or self.value(name) is not None

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
    if not folder.is_constant(weight_name):
        if folder.is_constant(activation):
            return "the constant is the left operand, not the weight"
        return "weight is not constant (computed from graph inputs)"
    if folder.is_constant(activation):
        return "both operands are constant"
    weight = folder.value(weight_name)
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
    return weight_name, (weight.shape, weight.dtype), consumer


def find_layers(model: onnx.ModelProto, nodes: list, include: str | None = None, exclude: str | None = None,
                base_dir: pathlib.Path | None = None):
    """(layers in topological order of their first use, skipped nodes with reasons).

    ``include``/``exclude`` are regular expressions searched in node names. ``base_dir``: where the
    model's external data is (:func:`external_base`); each weight is read to check it, then dropped.
    """
    folder = ConstantFolder(model.graph, nodes, model.opset_import, base_dir)
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
        weight_name, layout, consumer = found
        by_weight.setdefault(weight_name, []).append((layout, consumer))
    layers = []
    for weight_name, uses in by_weight.items():
        (shape, dtype), first = uses[0]
        reason = _sharing_conflict(uses)
        if reason:
            skipped.extend(Skipped(c.node_name, c.op, reason) for _, c in uses)
            continue
        groups = int(first.attributes.get("group", 1)) if first.op == "Conv" else 1
        layers.append(Layer(first.node_name, first.op, weight_name, functools.partial(folder.value, weight_name),
                            tuple(shape), dtype, [c for _, c in uses], groups))
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
