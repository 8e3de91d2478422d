"""npuflow: vision models from checkpoint to a simulated edge-NPU deployment, tracked in MLflow."""

__version__ = "0.1.0"
