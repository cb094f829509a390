"""Framework adapters (installed as ``qronos_linalg.adapters``): ONNX graphs and PyTorch models."""
