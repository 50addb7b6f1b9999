"""Torch modules shared by the algorithms: MLPs, batched critic ensembles, actors, exact k-NN search and a conditional VAE."""

from ocrl.nets.core import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    EnsembleLayerNorm,
    EnsembleLinear,
    TanhGaussianActor,
    TanhNormalPolicy,
    orthogonal_init,
    polyak_update,
)
from ocrl.nets.knn import NearestNeighbors
from ocrl.nets.vae import ConditionalVAE

__all__ = [
    "MLP",
    "ConditionalVAE",
    "CriticEnsemble",
    "DeterministicActor",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "NearestNeighbors",
    "TanhGaussianActor",
    "TanhNormalPolicy",
    "orthogonal_init",
    "polyak_update",
]
