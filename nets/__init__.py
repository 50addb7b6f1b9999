"""Torch modules shared by the algorithms: MLPs, batched critic ensembles, actors, an on-policy actor-critic, exact k-NN search and a conditional VAE."""

from ocrl.nets.actor_critic import ActorCritic
from ocrl.nets.core import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    EnsembleLayerNorm,
    EnsembleLinear,
    GaussianActor,
    SeedLinear,
    TanhGaussianActor,
    TanhNormalPolicy,
    autocast,
    compile_with_cuda_graphs,
    full_precision,
    gradient_step,
    orthogonal_init,
    polyak_update,
    uses_bf16,
    xavier_init,
)
from ocrl.nets.flat import FlatAdam, pack_parameters
from ocrl.nets.knn import NearestNeighbors
from ocrl.nets.vae import ConditionalVAE

__all__ = [
    "MLP",
    "ActorCritic",
    "ConditionalVAE",
    "CriticEnsemble",
    "DeterministicActor",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "FlatAdam",
    "GaussianActor",
    "NearestNeighbors",
    "SeedLinear",
    "TanhGaussianActor",
    "TanhNormalPolicy",
    "compile_with_cuda_graphs",
    "gradient_step",
    "autocast",
    "full_precision",
    "orthogonal_init",
    "pack_parameters",
    "polyak_update",
    "uses_bf16",
    "xavier_init",
]
