"""Calibrating the simulator against published measurements: the measurement file, the fit of each
profile's few physical parameters, and the cross-validations that say how far to trust it."""
