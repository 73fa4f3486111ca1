"""What a raymc checkpoint folder holds, and reading it back safely (weights_only=True).

Every epoch's checkpoint carries the full training state (to resume), the best weights so far
with their evaluation (so the newest checkpoint alone is enough to publish a run), and the
history of every epoch (so a restarted run keeps each epoch exactly once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raymc import storage

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
HISTORY_FILE = "history.json"
PROGRESS_FILE = "progress.json"


def save(
    folder: str | Path, *, state: dict[str, Any], best_model: dict[str, Any], history: list[dict], progress: dict
) -> None:
    folder = Path(folder)
    torch.save(state, folder / STATE_FILE)
    torch.save(best_model, folder / BEST_MODEL_FILE)
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    (folder / PROGRESS_FILE).write_text(json.dumps(progress))


def load_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def load_best_model(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / BEST_MODEL_FILE, map_location="cpu", weights_only=True)


def load_history(folder: str | Path) -> list[dict]:
    return storage.read_json(Path(folder) / HISTORY_FILE)


def load_progress(folder: str | Path) -> dict[str, Any]:
    """{"epoch": complete epochs, "steps_done": steps into the next, "stopped_early": bool}."""
    return storage.read_json(Path(folder) / PROGRESS_FILE)
