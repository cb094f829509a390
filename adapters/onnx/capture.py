"""From a node's input tensor to the rows of the core's X (samples × in_features), per weight group."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .graph import Consumer, Layer


def token_feature_axis(consumer: Consumer) -> int:
    """Axis of the activation that holds one token's features (reduced by per-token quantization)."""
    if consumer.op == "Conv":
        return 1
    if consumer.op == "Gemm" and consumer.attributes.get("transA", 0):
        return 0
    return -1


def conv_pads(consumer: Consumer, spatial: tuple, kernel: tuple) -> list:
    """Begin/end pads per spatial axis (explicit pads or auto_pad SAME_UPPER/SAME_LOWER/VALID)."""
    attrs = consumer.attributes
    strides = list(attrs.get("strides", [1] * len(spatial)))
    dilations = list(attrs.get("dilations", [1] * len(spatial)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * len(spatial)
    flat = list(attrs.get("pads", [0] * 2 * len(spatial)))
    n = len(spatial)
    return [(flat[i], flat[i + n]) for i in range(n)]


def layer_inputs(layer: Layer, consumer: Consumer, x: np.ndarray) -> list:
    """Rows of X for each weight group of ``layer`` (one entry unless a grouped Conv)."""
    if consumer.op == "MatMul":
        return [x.reshape(-1, x.shape[-1])]
    if consumer.op == "Gemm":
        return [x.T if consumer.attributes.get("transA", 0) else x]
    return _conv_patches(layer, consumer, x)


def _conv_patches(layer: Layer, consumer: Consumer, x: np.ndarray) -> list:
    kernel = layer.shape[2:]
    pads = conv_pads(consumer, x.shape[2:], kernel)
    attrs = consumer.attributes
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    padded = np.pad(x, [(0, 0), (0, 0)] + pads)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    windows = sliding_window_view(padded, extent, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    channels = x.shape[1] // layer.groups
    patches = []
    for g in range(layer.groups):
        block = windows[:, g * channels : (g + 1) * channels]  # (N, C/g, Ho, Wo, kh, kw)
        block = block.transpose(0, 2, 3, 1, 4, 5)
        patches.append(block.reshape(-1, channels * kernel[0] * kernel[1]))
    return patches
