"""Per-call budget overrides on the command line: ``--max-patches`` / ``--no-upscale`` (NaFlex-style budgets) and
``--min-pixels`` / ``--max-pixels`` (pixel budgets, Qwen-VL), applied with :meth:`FrontendConfig.with_budget`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI parses its arguments without importing the front end
    from navit_deploy.frontend import FrontendConfig

BUDGET_KEYS = ("max_patches", "upscale", "min_pixels", "max_pixels")


def add_pixel_budget_args(p: argparse.ArgumentParser) -> None:
    """``--min-pixels`` / ``--max-pixels``: the pixel budget of Qwen-VL-style models (default: the model's)."""
    p.add_argument("--min-pixels", type=int, default=None,
                   help="pixel-budget models (Qwen-VL): fewest pixels per image after resize (default: the model's)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixel-budget models (Qwen-VL): most pixels per image after resize (default: the model's)")


def budget_frontend(args: argparse.Namespace, frontend: FrontendConfig) -> FrontendConfig | None:
    """``frontend`` with the budget flags given on the command line (None: none given, keep the model's).
    A flag the model's budget does not use is a :class:`~navit_deploy.errors.ConfigError`."""
    changes = {k: getattr(args, k, None) for k in BUDGET_KEYS if getattr(args, k, None) is not None}
    return frontend.with_budget(**changes) if changes else None
