"""Generic layer-wise quantization of an nn.Module (Linear, Conv1d, Conv2d)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from _torch_tiny import recipe

from qronos_linalg.adapters.torch import quantize_module
from qronos_linalg.adapters.torch.layerwise import layer_input_matrix, layer_weight_matrix, supported_layers


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(3, 6, kernel_size=3, padding=1)
        self.conv2d = nn.Conv2d(6, 8, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.conv1d(x))  # (N, 6, L)
        y = torch.relu(self.conv2d(y.unsqueeze(2).expand(-1, -1, 3, -1)))
        return self.head(y.mean(dim=(2, 3)))


def _calibration(n_batches=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 12, generator=generator) for _ in range(n_batches)]


@settings(max_examples=25, deadline=None)
@given(
    kernel=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
    two_d=st.booleans(), seed=st.integers(0, 1000),
)
def test_unfolded_input_times_weight_is_the_convolution(kernel, stride, padding, dilation, two_d, seed):
    torch.manual_seed(seed)
    if two_d:
        layer = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation).double()
        x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    else:
        layer = nn.Conv1d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation).double()
        x = torch.randn(2, 3, 9, dtype=torch.float64)
    expected = layer(x).movedim(1, -1).reshape(-1, 4)
    patches = layer_input_matrix(layer, x)
    torch.testing.assert_close(patches @ layer_weight_matrix(layer).T + layer.bias, expected)


def test_every_layer_lands_on_its_grid_and_later_layers_see_quantized_inputs():
    model = ConvNet()
    results = quantize_module(model, _calibration(), recipe(algo="qronos", bits=3))
    assert list(results) == ["conv1d", "conv2d", "head"]
    for name, (result, report) in results.items():
        layer = dict(model.named_modules())[name]
        torch.testing.assert_close(
            layer_weight_matrix(layer).double(), result.grid.dequantize(result.codes).double(), atol=1e-6, rtol=0)
        assert report["samples"] > 0
    assert results["conv1d"][1]["input_gap"] == 0.0
    assert results["conv2d"][1]["input_gap"] > 0 and results["head"][1]["input_gap"] > 0


def test_activation_quantization_enters_x_tilde_of_the_first_layer():
    model = ConvNet()
    results = quantize_module(model, _calibration(), recipe(algo="optq", bits=4, act_bits=4))
    assert results["conv1d"][1]["input_gap"] > 0


def test_module_without_supported_layers_is_rejected():
    with pytest.raises(ValueError, match="no supported layers"):
        quantize_module(nn.Sequential(nn.ReLU()), [torch.zeros(1, 2)], recipe())


def test_grouped_convolution_is_rejected_by_name():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="'0'.*groups=2"):
        supported_layers(model)


@pytest.mark.parametrize("options, named", [
    ({"algo": "adaround"}, "algo"), ({"bits": 1}, "bits"), ({"bits": 3.0}, "bits"),
    ({"group_size": 0}, "group_size"), ({"shrink": 1.5}, "shrink"), ({"act_bits": 16}, "act_bits"),
    ({"magr": -1.0}, "magr_alpha"), ({"damp": float("inf")}, "damp"), ({"block_size": 0}, "block_size"),
])
def test_bad_settings_are_rejected_by_name(options, named):
    with pytest.raises(ValueError, match=named):
        recipe(**options)
