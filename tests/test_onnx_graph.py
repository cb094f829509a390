"""Graph analysis and staging of the ONNX adapter."""

import numpy as np
import onnx_graph_builders as gb

from qronos_linalg.adapters.onnx import quantize_onnx
from qronos_linalg.adapters.onnx.graph import find_layers, topological_nodes, with_weights_as_initializers
from qronos_linalg.adapters.onnx.staging import plan_stages


def analyse(model, **kwargs):
    nodes = topological_nodes(model.graph)
    return find_layers(model, nodes, **kwargs)


def test_mlp_layers_in_topological_order_with_core_layout():
    model = gb.mlp(np.random.default_rng(0), [16, 24, 12])
    layers, skipped = analyse(model)
    assert [layer.name for layer in layers] == ["fc0", "fc1"]
    B0 = onnx_array(model, "B0")
    np.testing.assert_array_equal(layers[0].core_weight(), B0.T)  # MatMul: W = Bᵀ
    assert (layers[0].out_features, layers[0].in_features) == (24, 16)
    assert skipped == []


def test_gemm_trans_b_weight_is_used_as_is():
    model = gb.gemm_trans_b(np.random.default_rng(1))
    (layer,), _ = analyse(model)
    np.testing.assert_array_equal(layer.core_weight(), onnx_array(model, "W"))


def test_grouped_conv_is_one_layer_with_per_group_columns():
    layers, _ = analyse(gb.conv_net(np.random.default_rng(2), channels=8, groups=2))
    assert [(l.name, l.groups, l.in_features) for l in layers] == [("conv1", 1, 27), ("conv2", 2, 36)]


def test_shared_weight_is_one_layer_with_two_consumers_both_feeding_its_statistics():
    rng = np.random.default_rng(3)
    model = gb.shared_weight(rng)
    (layer,), _ = analyse(model)
    assert [c.node_name for c in layer.consumers] == ["left", "right"]
    rows_per_sample = 5
    _, report = quantize_onnx(model, gb.samples(rng, (rows_per_sample, 32), 3), {"algo": "optq"})
    assert report["layers"][0]["samples"] == 2 * 3 * rows_per_sample  # rows of x and of tanh(x)


def test_topological_order_runs_other_nodes_before_delayed_matmuls():
    model = gb.shared_weight(np.random.default_rng(3))
    assert [n.name for n in topological_nodes(model.graph)] == ["tanh", "left", "right", "add"]


def test_constant_node_and_folded_transpose_are_weights_activation_product_is_skipped():
    model = gb.constant_and_folded_weights(np.random.default_rng(4))
    nodes = topological_nodes(model.graph)
    layers, skipped = find_layers(model, nodes)
    assert [layer.name for layer in layers] == ["from_constant", "from_folded"]
    w_init = onnx_array(model, "W")
    np.testing.assert_array_equal(layers[1].core_weight(), w_init)  # W = (Wᵀ)ᵀ
    assert [(s.name, s.reason) for s in skipped] == [("activation_product", "weight is not constant (computed from graph inputs)")]
    working = with_weights_as_initializers(model, nodes, layers)
    assert "Transpose" not in [n.op_type for n in working.graph.node if n.name == "transpose"]
    assert all(working.graph.node[c.node_index].name == l.name for l in layers for c in l.consumers[:1])


def test_include_and_exclude_select_by_node_name():
    model = gb.mlp(np.random.default_rng(5), [8, 8, 8, 8])
    layers, skipped = analyse(model, include="fc[12]", exclude="fc2")
    assert [layer.name for layer in layers] == ["fc1"]
    assert {s.name: s.reason for s in skipped} == {"fc0": "not matched by --include", "fc2": "matched by --exclude"}


def test_each_node_runs_in_one_stage_and_only_the_next_activation_is_carried():
    model = gb.mlp(np.random.default_rng(6), [8, 8, 8, 8, 8])
    nodes = topological_nodes(model.graph)
    layers, _ = find_layers(model, nodes)
    cuts = {c.node_index: c.activation for l in layers for c in l.consumers}
    stages = plan_stages(model.graph, list(cuts), cuts)
    ran = [i for stage in stages for i in stage.nodes]
    assert len(ran) == len(set(ran))  # linear work: no node is run twice per stream
    assert "out" not in [model.graph.node[i].name for i in ran]  # nothing after the last layer runs
    for stage, next_stage in zip(stages[:-1], stages[1:]):
        assert stage.keep_after == {cuts[next_stage.start_node]}


def onnx_array(model, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
