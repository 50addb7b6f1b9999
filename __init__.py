"""ocrl: single-file offline and continuous-control RL algorithms on a small shared library."""

from __future__ import annotations

from typing import Any


def load_policy(run_dir: Any) -> Any:
    """The policy of a run folder (its policy.pt2) as a callable: numpy or torch observations in, the same out."""
    # Imported here, so that `import ocrl` stays cheap (no torch until a policy is loaded).
    from ocrl.experiment.policy import load_policy as load

    return load(run_dir)
