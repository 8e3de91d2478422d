"""Evaluation: the quantised model against the float reference (classification, segmentation, detection) and per-layer analysis."""
