"""dcvbench: benchmark gradient estimators for models with discrete latent variables."""

__version__ = "0.1.0"
