"""Datasets: download, unpack, preparation and preprocessing for calibration and evaluation."""
