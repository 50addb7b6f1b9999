"""Gymnasium ids of ocrl's own environments (the inventory and lot-sizing problems).

They are registered with string entry points when `ocrl.envs` is imported, so `gym.make` of an id
imports its simulator then, and an algorithm that never makes one never loads it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["INVENTORY_IDS", "LOT_SIZING_IDS", "LOT_SIZING_PUBLISHED", "register_envs"]

#: Inventory-control settings (`ocrl.envs.inventory.make_problem`) by Gymnasium id.
INVENTORY_IDS: dict[str, dict[str, Any]] = {
    "ocrl/OneStoreLost-v0": {"setting": "one_store_lost"},
    "ocrl/OneStoreBacklogged-v0": {"setting": "one_store_backlogged"},
    "ocrl/SerialSystem-v0": {"setting": "serial"},
    "ocrl/OneWarehouseLost-v0": {"setting": "one_warehouse"},
}
#: The published lot-sizing instances (the keys of `ocrl.envs.lot_sizing.PUBLISHED`).
LOT_SIZING_PUBLISHED = ("15x5", "20x10", "25x10", "25x15")
#: Lot-sizing environments by Gymnasium id: a generated instance, or a published one.
LOT_SIZING_IDS: dict[str, dict[str, Any]] = {
    "ocrl/LotSizing-v0": {},
    **{f"ocrl/LotSizing-{k}-v0": {"published": k} for k in LOT_SIZING_PUBLISHED},
}


def register_envs() -> None:
    """Register the Gymnasium ids (idempotent); imports neither simulator."""
    for env_id, kwargs in INVENTORY_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="ocrl.envs.inventory:InventoryEnv", kwargs=kwargs)
    for env_id, kwargs in LOT_SIZING_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="ocrl.envs.lot_sizing:LotSizingEnv",
                vector_entry_point="ocrl.envs.lot_sizing:LotSizingVectorEnv",
                kwargs=kwargs,
            )
