"""What Ray Train has registered in a run folder: its newest checkpoint, read from the snapshot
Train writes after each report (tests poll it to act at a known point of a run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_registered(run_dir: Path) -> dict[str, Any]:
    """The newest registered checkpoint's result (checkpoint_dir_name, metrics), or {} before the first."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return json.loads(snapshot.read_text())["latest_checkpoint_result"] if snapshot.exists() else {}


def registered_epochs(run_dir: Path) -> int:
    """Epochs completed in the newest registered checkpoint (0 before the first)."""
    return latest_registered(run_dir).get("metrics", {}).get("epoch", 0)


def registered_history(run_dir: Path) -> list[dict] | None:
    """The history in the newest registered checkpoint, or None before the first one."""
    latest = latest_registered(run_dir)
    if not latest:
        return None
    return json.loads((run_dir / latest["checkpoint_dir_name"] / "history.json").read_text())
