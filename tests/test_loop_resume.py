"""A resumed run continues the one that stopped: the same random draws (mixup, dropout), the fp16
loss scale (or a fresh one after CPU epochs), and a first-epoch preemption report Tune accepts.

The loop's save_and_report/restore run for real on a tiny two-stream model; only Ray Train's
report call is replaced, by one that keeps the checkpoint folder. No Ray needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray.train
import torch
from torch import nn

from raymc import checkpoint, loop
from raymc.config import build_config
from raymc.data.augment import mixup
from raymc.data.spec import DataSpec, StreamSpec
from raymc.early_stopping import EarlyStopping
from raymc.ema import WeightAverage
from raymc.optim import build_scheduler
from raymc.precision import Precision
from raymc.tune.experiment import REPORTED_METRICS

SPEC = DataSpec(
    classes=tuple("abcdef"),  # 6 classes: validation reports top-5 too
    streams=(
        StreamSpec("rgb", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=255.0),
        StreamSpec("depth", mean=(2.0,), std=(1.0,), missing_is_zero=True),
    ),
    num_train=8,
    num_val=6,
)
START_SEED = 1234  # what start_worker seeds each rank's generators with before any checkpoint


class TwoStream(nn.Module):
    """The smallest model with what the loop and pathway analysis use of an MCResNet."""

    num_streams = 2
    stream_names = ("rgb", "depth")

    def __init__(self) -> None:
        super().__init__()
        self.rgb, self.depth = nn.Linear(3, 4), nn.Linear(1, 4)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, len(SPEC.classes))

    def features(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rgb(rgb.mean((2, 3))), self.depth(depth.mean((2, 3)))

    def classify(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.cat([f1, f2], 1)))

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return self.classify(*self.features(rgb, depth))


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(n)  # data, not the training stream
    return {
        "rgb": torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=generator),
        "depth": torch.rand(n, 1, 4, 4, generator=generator) * 4,
        "label": torch.arange(n) % len(SPEC.classes),
    }


class Shard:
    """A validation shard: Ray Data's iter_torch_batches over two fixed batches."""

    def iter_torch_batches(self, batch_size: int, **options: Any) -> list[dict[str, torch.Tensor]]:
        return [batch(4), batch(2)]


def make_state(
    *, fp16_scaler: bool = False, rank: int = 0, world_size: int = 1, deterministic: bool = False
) -> loop.LoopState:
    """A fresh worker's state, as start_worker leaves it on a CPU (the scaler as on a fp16 GPU if asked)."""
    config = build_config({"batch": 4, "epochs": 3, "deterministic": deterministic, "preemption_check_steps": 1})
    torch.manual_seed(config.seed)
    core = TwoStream()
    torch.manual_seed(START_SEED)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1, momentum=0.9)
    return loop.LoopState(
        config=config,
        spec=SPEC,
        rank=rank,
        world_size=world_size,
        device=torch.device("cpu"),
        precision=Precision(None),
        num_steps=2,
        clock=None,
        train_shard=None,
        val_shard=Shard(),
        telemetry=SimpleNamespace(record_window=lambda *_, **__: None, record_epoch=lambda _: None),
        model=core,
        core=core,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, 2),
        scaler=torch.amp.GradScaler("cpu", enabled=fp16_scaler),
        stopper=EarlyStopping(config.monitor),
    )


@dataclass
class Report:
    metrics: dict[str, Any]
    checkpoint: ray.train.Checkpoint | None


@pytest.fixture
def reports(monkeypatch, tmp_path) -> list[Report]:
    """What the loop reports to Ray Train, each checkpoint folder kept (the loop's is temporary)."""
    kept: list[Report] = []

    def report(metrics, checkpoint=None, checkpoint_dir_name=None):
        saved = None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                saved = ray.train.Checkpoint.from_directory(shutil.copytree(folder, tmp_path / checkpoint_dir_name))
        kept.append(Report(dict(metrics), saved))

    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: None)
    return kept


def draws(state: loop.LoopState) -> torch.Tensor:
    """Random numbers an epoch draws: mixup's lambda and permutation, dropout masks, a plain draw."""
    inputs = [torch.ones(4, 3, 4, 4), torch.ones(4, 1, 4, 4)]
    mixed, targets = mixup(inputs, torch.arange(4), alpha=0.4, num_classes=len(SPEC.classes))
    state.core.train()
    dropped = state.core.dropout(torch.ones(64))
    return torch.cat([mixed[0].flatten(), targets.flatten(), dropped, torch.rand(8)])


# ---------------------------------------------------------------- random generators


def test_a_resumed_run_draws_the_numbers_the_uninterrupted_run_draws(reports):
    first = make_state()
    draws(first)  # epoch 1's draws
    loop.save_and_report(first, {"epoch": 1}, epoch=1)
    uninterrupted = draws(first)  # epoch 2, never interrupted

    restarted = make_state()  # a new worker: seeded as start_worker seeds it, so at epoch 1's stream
    loop.restore(restarted, reports[-1].checkpoint)
    assert restarted.epoch == 2
    assert torch.equal(draws(restarted), uninterrupted)


def test_a_mid_epoch_checkpoint_resumes_the_stream_at_its_step(reports):
    first = make_state()
    loop.train_one_epoch(first, [batch(4)])  # the epoch's first step (dropout draws), then preempted
    loop.save_before_preemption(first, steps_done=1)
    uninterrupted = draws(first)

    restarted = make_state()
    loop.restore(restarted, reports[-1].checkpoint)
    assert (restarted.epoch, restarted.first_step) == (1, 1)
    assert torch.equal(draws(restarted), uninterrupted)


def test_each_rank_restores_its_own_generators():
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append(checkpoint.rng_state(torch.device("cpu")))
    expected = torch.rand(4)  # what rank 1's stream draws next
    torch.manual_seed(0)
    assert checkpoint.restore_rng(states, device=torch.device("cpu"), rank=1, world_size=2) is None
    assert torch.equal(torch.rand(4), expected)


def test_rank_0_gathers_every_ranks_generators_into_the_checkpoint(monkeypatch):
    """With a process group, the checkpoint's list holds each rank's states, in rank order."""
    other = {"rng": {"torch": torch.Generator().manual_seed(7).get_state()}, "epoch_totals": None}

    def all_gather_object(out, mine):
        out[:] = [mine, other]

    monkeypatch.setattr(checkpoint.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(checkpoint.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(checkpoint.dist, "all_gather_object", all_gather_object)
    state = make_state(world_size=2)
    saved = checkpoint.training_state(state, epoch=1, steps_done=0)
    assert len(saved["rng"]) == 2
    assert torch.equal(saved["rng"][0]["torch"], torch.get_rng_state())
    assert torch.equal(saved["rng"][1]["torch"], other["rng"]["torch"])


def test_another_world_size_seeds_from_seed_rank_and_epoch_and_says_so(reports, monkeypatch, caplog):
    loop.save_and_report(make_state(), {"epoch": 1}, epoch=1)  # a run of 1 worker
    replayed = draws(make_state())  # what a restarted worker draws when nothing is restored: epoch 1's

    restarted = make_state(world_size=2)
    monkeypatch.setattr(loop.logger, "propagate", True)
    with caplog.at_level(logging.INFO):
        loop.restore(restarted, reports[-1].checkpoint)
    assert "random generators of 1 workers and this run has 2" in caplog.text
    resumed = draws(restarted)
    torch.manual_seed(checkpoint.resume_seed(restarted.config.seed, 0, 2))  # (seed, rank, epoch)
    assert torch.equal(resumed, draws(restarted)) and not torch.equal(resumed, replayed)


def test_checkpoints_with_generators_load_with_weights_only(reports):
    loop.save_and_report(make_state(), {"epoch": 1}, epoch=1)
    with reports[-1].checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / checkpoint.STATE_FILE, weights_only=True)
    assert saved["rng"][0]["torch"].dtype == torch.uint8


# ---------------------------------------------------------------- GradScaler


def test_an_fp16_run_resumes_from_epochs_trained_without_gradscaler(reports, monkeypatch, caplog):
    loop.save_and_report(make_state(fp16_scaler=False), {"epoch": 1}, epoch=1)  # CPU workers: scaler state {}
    restarted = make_state(fp16_scaler=True)
    monkeypatch.setattr(loop.logger, "propagate", True)
    with caplog.at_level(logging.INFO):
        loop.restore(restarted, reports[-1].checkpoint)
    assert restarted.epoch == 2
    assert restarted.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # a fresh scale
    assert "the scale starts fresh" in caplog.text


def test_an_fp16_run_resumes_with_its_loss_scale(reports):
    first = make_state(fp16_scaler=True)
    first.scaler.scale(torch.ones(()))  # make the scale, then lower it as overflowing steps would
    first.scaler.update(new_scale=1024.0)
    loop.save_and_report(first, {"epoch": 1}, epoch=1)
    restarted = make_state(fp16_scaler=True)
    loop.restore(restarted, reports[-1].checkpoint)
    assert restarted.scaler.get_scale() == 1024.0


# ---------------------------------------------------------------- a preemption in the first epoch


def test_a_first_epoch_preemption_reports_every_metric_tune_may_search(reports):
    state = make_state()
    loop.save_before_preemption(state, steps_done=1)
    metrics = reports[-1].metrics
    assert set(REPORTED_METRICS) | {f"best_{state.config.monitor}", "best_epoch"} <= set(metrics)
    assert metrics["epoch"] == 0 and metrics["best_epoch"] == 0
    assert all(math.isnan(metrics[name]) for name in REPORTED_METRICS)  # not measured yet
    assert reports[-1].checkpoint is not None


def test_the_first_epoch_preemption_report_names_what_an_epoch_reports(reports):
    state = make_state()
    epoch_keys = {"epoch", "lr", "epoch_time_s", "images_per_s"}  # added by train_loop_per_worker
    epoch_keys |= set(loop.train_one_epoch(state, [batch(4), batch(4)])) | set(loop.validate_epoch(state)[0])
    assert set(loop.epoch_metric_names(state)) == epoch_keys


def test_a_later_preemption_reports_the_last_epoch_with_its_best(reports):
    state = make_state()
    metrics = {name: 0.5 for name in loop.epoch_metric_names(state)} | {"epoch": 1}
    state.stopper.update(metrics, 1)
    state.history.append(metrics)
    state.epoch = 2
    loop.save_before_preemption(state, steps_done=1)
    assert reports[-1].metrics == {**metrics, "best_epoch": 1, f"best_{state.config.monitor}": 0.5}


# ---------------------------------------------------------------- --deterministic: a resume inside an epoch


def preempted_after_the_first_step(monkeypatch) -> None:
    """Ray Train's preemption notice arrives during the epoch's first step (and stays)."""
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: SimpleNamespace(reason="PREEMPTION"))


def test_a_deterministic_resume_inside_an_epoch_trains_the_batches_it_had_not_and_reports_the_whole_epoch(
    reports, monkeypatch
):
    """The preempted worker checkpoints after step 1 and goes on (as until its node goes): what it
    ends the epoch with is the uninterrupted run. A new worker resumed from that checkpoint must
    read past batch 1, train batch 2 only, and report the epoch's loss and accuracy over both."""
    preempted_after_the_first_step(monkeypatch)
    epoch = [batch(4), batch(3)]
    uninterrupted_state = make_state(deterministic=True)
    uninterrupted = loop.train_one_epoch(uninterrupted_state, epoch)
    restarted = make_state(deterministic=True)
    loop.restore(restarted, reports[-1].checkpoint)
    assert (restarted.epoch, restarted.first_step) == (1, 1)
    resumed = loop.train_one_epoch(restarted, [batch(4), batch(3)])
    assert resumed["train_loss"] == uninterrupted["train_loss"]
    assert resumed["train_acc"] == uninterrupted["train_acc"]
    for name, tensor in uninterrupted_state.core.state_dict().items():
        assert torch.equal(restarted.core.state_dict()[name], tensor), name


def test_outside_deterministic_a_resumed_epoch_trains_on_the_first_batches_of_the_new_pass(reports, monkeypatch):
    """Ray Data's order differs between passes there, so skipping would skip other rows: the resumed
    epoch trains its remaining steps on the pass's first batches (what the README says)."""
    preempted_after_the_first_step(monkeypatch)
    loop.train_one_epoch(make_state(), [batch(4), batch(3)])
    restarted = make_state()
    loop.restore(restarted, reports[-1].checkpoint)
    trained_on = []
    restarted_step = loop.train_step

    def recording_step(context, one_batch, **kwargs):
        trained_on.append(one_batch["label"].shape[0])
        return restarted_step(context, one_batch, **kwargs)

    monkeypatch.setattr(loop, "train_step", recording_step)
    loop.train_one_epoch(restarted, [batch(4), batch(3)])
    assert trained_on == [4]  # the pass's first batch, for the one step left


def test_resumed_totals_fall_to_rank_0_when_the_number_of_workers_changed():
    saved = [torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64)]
    assert torch.equal(checkpoint.resumed_totals(saved, rank=1, world_size=2), saved[1])
    assert checkpoint.resumed_totals(saved, rank=0, world_size=3).tolist() == [4.0, 3.0, 8.0]
    assert checkpoint.resumed_totals(saved, rank=2, world_size=3).tolist() == [0.0, 0.0, 0.0]
    assert checkpoint.resumed_totals([None, None], rank=0, world_size=2) is None


# ---------------------------------------------------------------- --ema-decay


def test_the_weight_average_is_validated_checkpointed_and_resumed(reports):
    state = make_state()
    state.config = dataclasses.replace(state.config, model="mc_resnet18", ema_decay=0.5, monitor="val_acc_ema")
    state.ema = WeightAverage(state.core, 0.5)
    loop.train_one_epoch(state, [batch(4), batch(4)])
    metrics, _ = loop.validate_epoch(state)
    assert {"val_acc_ema", "val_loss_ema", "val_mean_class_acc_ema"} <= set(metrics)
    assert set(loop.epoch_metric_names(state)) >= {"val_acc_ema", "val_acc_rgb_only_ema"}
    state.best = checkpoint.best_model(state, {**metrics, "epoch": 1}, {})
    assert state.best["weights"] == "ema"
    assert all(torch.equal(state.best["state_dict"][k], v) for k, v in state.ema.state_dict().items())
    loop.save_and_report(state, {"epoch": 1}, epoch=1)

    restarted = make_state()
    restarted.config = state.config
    restarted.ema = WeightAverage(restarted.core, 0.5)
    loop.restore(restarted, reports[-1].checkpoint)
    for name, tensor in state.ema.state_dict().items():
        assert torch.equal(restarted.ema.state_dict()[name], tensor), name
