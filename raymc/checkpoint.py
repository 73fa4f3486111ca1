"""What a raymc checkpoint folder holds, and reading it back safely (weights_only=True).

Every epoch's checkpoint carries the full training state (to resume), the best weights so far
with their evaluation (so the newest checkpoint alone is enough to publish a run), and the
history of every epoch (so a restarted run keeps each epoch exactly once).

The training state includes every rank's random generators, so that a resumed run draws the
same mixup, dropout and stochastic-depth numbers as one that was never interrupted.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from raymc import storage
from raymc.early_stopping import EarlyStopping
from raymc.models import model_kwargs

if TYPE_CHECKING:
    from raymc.loop import LoopState

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
HISTORY_FILE = "history.json"
PROGRESS_FILE = "progress.json"

RngState = dict[str, torch.Tensor]  # generator name ("torch", "cuda") -> its state, a CPU ByteTensor


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


# ---------------------------------------------------------------- the training state (state.pt)


def training_state(
    state: LoopState, *, epoch: int, steps_done: int, epoch_totals: torch.Tensor | None = None
) -> dict[str, Any]:
    """state.pt's payload after `epoch` epochs and `steps_done` steps of the next one, whose
    running [loss sum, correct, samples] on this rank are `epoch_totals`.

    Every rank must call it (it gathers the ranks' generators and totals); only rank 0's result is written.
    """
    ranks = gather_rank_states(state.device, epoch_totals)
    return {
        "model": state.core.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": epoch,
        "steps_done": steps_done,
        "early_stopping": state.stopper.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "rng": [rank["rng"] for rank in ranks],
        "epoch_totals": [rank["epoch_totals"] for rank in ranks],
    }


def load_training_state(state: LoopState, saved: dict[str, Any]) -> list[str]:
    """Continue `state` from a state.pt payload: weights, optimizer, schedule, scaler, early stopping,
    the position (the epoch after the saved one, plus the steps it had done of that) and this rank's
    random generators. Returns notes on what could not continue exactly, for the log."""
    notes = []
    state.core.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:
        state.scaler.load_state_dict(saved["scaler"])
    elif state.scaler.is_enabled():  # a disabled scaler's state is {}: loading it into an enabled one raises
        notes.append("the checkpoint has no fp16 loss scale (it trained without GradScaler): the scale starts fresh")
    state.stopper = EarlyStopping(**saved["early_stopping"])
    if state.ema is not None and saved.get("ema") is not None:
        state.ema.load_state_dict(saved["ema"])
    state.epoch, state.first_step = saved["epoch"] + 1, saved["steps_done"]
    if state.first_step:
        state.resumed_totals = resumed_totals(saved.get("epoch_totals"), rank=state.rank, world_size=state.world_size)
    why = restore_rng(saved.get("rng"), device=state.device, rank=state.rank, world_size=state.world_size)
    if why:
        torch.manual_seed(resume_seed(state.config.seed, state.rank, state.epoch))
        notes.append(f"{why}: each worker seeds its random generators from (seed, rank, epoch) instead")
    return notes


def best_model(state: LoopState, metrics: dict[str, float], evaluation: dict[str, Any]) -> dict[str, Any]:
    """best_model.pt's payload: this epoch's weights (on the CPU) with what rebuilding and reading them
    needs; with --monitor <metric>_ema, the averaged weights ("weights": "ema", else "raw")."""
    config = state.config
    averaged = config.monitor.endswith("_ema")
    weights = state.ema.model if averaged else state.core
    return {
        "state_dict": copy.deepcopy({k: v.detach().cpu() for k, v in weights.state_dict().items()}),
        "weights": "ema" if averaged else "raw",
        "model": config.model,
        "model_kwargs": model_kwargs(config, state.spec.num_classes),
        "classes": list(state.spec.classes),
        "num_params": sum(p.numel() for p in state.core.parameters()),
        "config": config.to_dict(),
        "epoch": state.epoch,
        "metrics": metrics,
        "pretrained": state.pretrained,
        **evaluation,
    }


# ---------------------------------------------------------------- random generators


def rng_state(device: torch.device) -> RngState:
    """The generators the loop draws from on `device`: torch's CPU one (mixup's lambda, and
    everything on a CPU) and, on a GPU, that GPU's (dropout, stochastic depth, mixup's permutation).
    The loop draws nothing from numpy or Python's `random`."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def gather_rank_states(device: torch.device, epoch_totals: torch.Tensor | None) -> list[dict[str, Any]]:
    """Every rank's {"rng": generator states, "epoch_totals": running totals of the epoch or None}
    in rank order, on every rank: only rank 0 writes the checkpoint.

    A collective when a process group exists (every rank must call it); world size 1 has none.
    """
    mine = {"rng": rng_state(device), "epoch_totals": None if epoch_totals is None else epoch_totals.cpu()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def restore_rng(saved: list[RngState] | None, *, device: torch.device, rank: int, world_size: int) -> str | None:
    """Put this rank's saved generators back. Returns why it could not (None when it did): the
    checkpoint predates saved generators, or came from another number of workers or device type."""
    if not saved:
        return "the checkpoint holds no random generator states"
    if len(saved) != world_size:
        return f"the checkpoint holds the random generators of {len(saved)} workers and this run has {world_size}"
    mine = saved[rank]
    if device.type == "cuda" and "cuda" not in mine:
        return "the checkpoint holds no GPU random generator state (it trained on CPUs)"
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
    return None


def resumed_totals(saved: list[torch.Tensor | None] | None, *, rank: int, world_size: int) -> torch.Tensor | None:
    """This rank's running [loss sum, correct, samples] of a preempted epoch (None when the checkpoint
    has none): its own with the same number of workers, else rank 0 carries the sum over every saved
    rank (the epoch's totals are summed over ranks) and the others start from zero."""
    if not saved or saved[0] is None:
        return None
    if len(saved) == world_size:
        return saved[rank]
    return torch.stack(saved).sum(0) if rank == 0 else torch.zeros_like(saved[0])


def resume_seed(seed: int, rank: int, epoch: int) -> int:
    """A 63-bit seed for one rank from the resumed `epoch` on, when its saved generators cannot be
    used: fresh draws rather than a replay of the stream that epoch 1 drew."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0]) >> 1
