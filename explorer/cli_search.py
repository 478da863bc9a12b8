"""Subcommands for search, evaluation and training (registered by ``explorer.cli``)."""

from __future__ import annotations


def register(sub, add_library_option, add_model_options) -> None:
    return None
