"""Discrete latents: the two families (binary, categorical) and the noise their samples come from.

The bottom layer: estimators and problems both import it, neither is imported here.
"""

from dcvbench.latent.family import (
    BINARY,
    CATEGORICAL,
    FAMILIES,
    LATENT_TYPES,
    BinaryFamily,
    CategoricalFamily,
    LatentFamily,
    Neighbours,
    family_named,
)

__all__ = [
    "BINARY",
    "CATEGORICAL",
    "FAMILIES",
    "LATENT_TYPES",
    "BinaryFamily",
    "CategoricalFamily",
    "LatentFamily",
    "Neighbours",
    "family_named",
]
