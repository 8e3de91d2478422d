"""Graph stages: ONNX export, onnxsim simplification, graph surgery passes."""
