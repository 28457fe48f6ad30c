"""Measurements over any estimator: gradient variance and bias statistics."""
