"""What Ray Train has registered in a run folder (local or on object storage): its newest
checkpoint, read from the snapshot Train writes after each report (tests poll it to act at a known
point of a run; a checkpoint whose files are uploaded but not yet registered is not resumed from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raymc import storage


def latest_registered(run_dir: str | Path) -> dict[str, Any]:
    """The newest registered checkpoint's result (checkpoint_dir_name, metrics), or {} before the first."""
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    return storage.read_json(snapshot)["latest_checkpoint_result"] if storage.is_file(snapshot) else {}


def registered_epochs(run_dir: str | Path) -> int:
    """Epochs completed in the newest registered checkpoint (0 before the first)."""
    return latest_registered(run_dir).get("metrics", {}).get("epoch", 0)


def registered_history(run_dir: str | Path) -> list[dict] | None:
    """The history in the newest registered checkpoint, or None before the first one."""
    latest = latest_registered(run_dir)
    if not latest:
        return None
    return storage.read_json(storage.join(run_dir, latest["checkpoint_dir_name"], "history.json"))
