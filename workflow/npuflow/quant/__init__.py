"""Quantisation: precision recipes, calibration, onnxruntime quantisation, automatic mixed precision, PTQ methods."""
