"""Helpers every layer uses: files written whole, errors, registries, progress, downloads, onnx helpers."""
