"""How a setting's name is spelled on the command line, one rule for every raymc command."""

from __future__ import annotations


def flag_names(name: str) -> list[str]:
    """Both spellings of a field's flag, dash first."""
    dashed = "--" + name.replace("_", "-")
    return [dashed] if "_" not in name else [dashed, "--" + name]
