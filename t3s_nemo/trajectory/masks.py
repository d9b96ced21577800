"""T3S mask rules on the confidence-change channel (delta = log p at theta_b - log p at theta_0).

A rule maps one example's channels to a 0/1 array over its tokens: 1 = the loss trains on this token.
Rules are registered functions (a new rule is a new function here, never an `if` in the loss).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from t3s_nemo.errors import T3SError

Rule = Callable[[np.ndarray, float], np.ndarray]
_RULES: dict[str, Rule] = {}


def rule(name: str):
    def register(fn: Rule) -> Rule:
        _RULES[name] = fn
        return fn

    return register


@rule("ar")
def anchor_mask(delta: np.ndarray, tau: float = 0.0) -> np.ndarray:
    """AR T3S: imitation anchors (delta > 0, confidence rose by the bottleneck) are left out."""
    return (delta <= 0).astype(np.uint8)


@rule("reverse")
def reverse_mask(delta: np.ndarray, tau: float = 0.0) -> np.ndarray:
    """-T3S diagnostic: train on the anchors only."""
    return (delta > 0).astype(np.uint8)


@rule("dllm")
def dllm_targets(delta: np.ndarray, tau: float = 0.2) -> np.ndarray:
    """dLLM T3S targets: yet-to-learn tokens whose confidence fell by more than tau (always noised)."""
    return (delta < -tau).astype(np.uint8)


def rules() -> tuple[str, ...]:
    return tuple(_RULES)


def get_rule(name: str) -> Rule:
    if name not in _RULES:
        raise T3SError(f"unknown mask rule '{name}' (one of {', '.join(_RULES)})")
    return _RULES[name]


def load_time_rule(name: str, delta_channel: str, tau: float):
    """A PackedBins mask function applying rule `name` to the delta channel while loading."""
    fn = get_rule(name)

    def apply(channels: dict[str, np.ndarray]) -> np.ndarray:
        return fn(channels[delta_channel], tau)

    return apply
