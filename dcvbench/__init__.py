"""dcvbench: benchmark gradient estimators for models with discrete latent variables."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``dcvbench.compare`` and ``dcvbench.train``, imported on first use: ``import dcvbench`` (the
    CLI's start) stays cheap."""
    if name == "compare":
        from dcvbench.comparison import compare

        return compare
    if name == "train":
        from dcvbench.jobs.user_training import train

        return train
    raise AttributeError(f"module 'dcvbench' has no attribute {name!r}")
