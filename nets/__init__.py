"""Torch modules shared by the algorithms: MLPs, batched critic ensembles and actors."""

from ocrl.nets.core import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    EnsembleLinear,
    TanhGaussianActor,
    polyak_update,
)

__all__ = [
    "MLP",
    "CriticEnsemble",
    "DeterministicActor",
    "EnsembleLinear",
    "TanhGaussianActor",
    "polyak_update",
]
