"""The diffusion models, in one import: EDM (`ocrl.nets.edm`), its trainer and model file (`ocrl.nets.edm_model`),
the DDPM/VP chain of diffusion policies (`ocrl.nets.ddpm`) and their training utilities
(`ocrl.nets.diffusion_training`: normaliser, EMA, lr schedules)."""

from ocrl.nets.ddpm import DDPM, LearnedFourierTime, LNResNetBlock, LNResNetEpsNet, vp_beta_schedule
from ocrl.nets.diffusion_training import EMA, DiffusionNormalizer, lr_factor
from ocrl.nets.edm import (
    EDMConfig,
    EDMDenoiser,
    PreStepHook,
    RandomFourierTime,
    ResidualMLPDenoiser,
    TemporalUNet,
    churn_gammas,
    heun_sample,
    loss_weight,
    preconditioning,
    sigma_schedule,
)
from ocrl.nets.edm_model import (
    MODEL_FORMAT,
    DiffusionModel,
    EDMTrainer,
    bf16_autocast,
    build_network,
    denoiser_from_state,
    fit_model,
    model_state,
)

__all__ = [
    "DDPM",
    "EMA",
    "MODEL_FORMAT",
    "DiffusionModel",
    "DiffusionNormalizer",
    "EDMConfig",
    "EDMDenoiser",
    "EDMTrainer",
    "LNResNetBlock",
    "LNResNetEpsNet",
    "LearnedFourierTime",
    "PreStepHook",
    "RandomFourierTime",
    "ResidualMLPDenoiser",
    "TemporalUNet",
    "bf16_autocast",
    "build_network",
    "churn_gammas",
    "denoiser_from_state",
    "fit_model",
    "heun_sample",
    "loss_weight",
    "lr_factor",
    "model_state",
    "preconditioning",
    "sigma_schedule",
    "vp_beta_schedule",
]
