"""Torch modules shared by the algorithms: MLPs, batched critic ensembles, actors and exact k-NN search."""

from ocrl.nets.core import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    EnsembleLinear,
    TanhGaussianActor,
    polyak_update,
)
from ocrl.nets.knn import NearestNeighbors

__all__ = [
    "MLP",
    "CriticEnsemble",
    "DeterministicActor",
    "EnsembleLinear",
    "NearestNeighbors",
    "TanhGaussianActor",
    "polyak_update",
]
