"""MLflow tracking: a stage's records logged as runs, and the tracking server checks."""
