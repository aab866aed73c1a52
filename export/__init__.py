"""probret.export: checkpoint -> ONNX / TensorRT bundle with parity gates."""
