"""Model sources (timm, Hugging Face, torchvision, Ultralytics, ONNX files, URLs): the registry
(npuflow.sources.core), safe checkpoint loading and the fetch stage. The sources with modules of
their own register into the registry on import, so importing any of this package loads them all."""

from npuflow.sources import core, files, hf, onnx_files, timm, torchvision, ultralytics  # noqa: F401
