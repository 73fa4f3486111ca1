"""A run's files: tables round-trip, JSON has null for NaN, PNGs open, TensorBoard reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raymc.errors import DataError
from raymc.outputs import read_history, write_run_outputs

NAN = float("nan")
CLASSES = ["bedroom", "kitchen", "office"]
CONFUSION = [[8, 1, 1], [2, 6, 2], [0, 1, 9]]
PATHWAYS = {"full": 0.81, "rgb_only": 0.52, "depth_only": 0.49}
SUMMARY = {
    "model": "mc_resnet18",
    "dataset": "nyu",
    "best_epoch": 3,
    "best_metric": "val_mean_class_acc",
    "best_value": 0.77,
    "stopped_early": False,
    "final": {"val_acc": 0.76, "val_loss": 0.61},
    "config": {"lr": 0.1, "milestones": [2, 3]},
}
ALWAYS = {
    "history_csv": "history.csv",
    "history_json": "history.json",
    "summary_json": "summary.json",
    "training_history_csv": "training_history.csv",
    "training_summary_csv": "training_summary.csv",
    "training_curves_png": "plots/training_curves.png",
    "tensorboard": "tensorboard",
}
OPTIONAL = {
    "confusion_matrix_png": "plots/confusion_matrix.png",
    "pathways_json": "pathways.json",
    "pathways_png": "plots/pathways.png",
}


def make_history(epochs: int, *, pathways: bool) -> list[dict[str, float]]:
    """A plausible per-epoch history; epoch 2's val_loss is NaN."""
    rows = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch,
            "train_loss": 2.0 / epoch,
            "train_acc": 0.3 + 0.1 * epoch,
            "val_loss": NAN if epoch == 2 else 2.2 / epoch,
            "val_acc": 0.25 + 0.1 * epoch,
            "val_acc5": 0.6 + 0.05 * epoch,
            "val_mean_class_acc": 0.2 + 0.1 * epoch,
            "lr": 0.1 / 3**epoch,
            "epoch_time_s": 10.5 + epoch,
            "images_per_s": 812.25,
        }
        if pathways:
            row["val_acc_rgb_only"] = 0.2 + 0.05 * epoch
            row["val_acc_depth_only"] = 0.15 + 0.05 * epoch
        rows.append(row)
    return rows


HISTORY = make_history(4, pathways=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A run folder written twice (a longer stale history first), with every optional input."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    write_run_outputs(
        run_dir,
        history=make_history(6, pathways=True),
        summary={},
        classes=CLASSES,
        confusion=CONFUSION,
        pathways=PATHWAYS,
    )
    written = write_run_outputs(
        run_dir, history=HISTORY, summary=SUMMARY, classes=CLASSES, confusion=CONFUSION, pathways=PATHWAYS
    )
    return run_dir, written


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A one-stream run (no pathway keys, no confusion) over a folder that had both before."""
    run_dir = tmp_path_factory.mktemp("plain")
    write_run_outputs(
        run_dir, history=HISTORY, summary=SUMMARY, classes=CLASSES, confusion=CONFUSION, pathways=PATHWAYS
    )
    written = write_run_outputs(
        run_dir,
        history=make_history(3, pathways=False),
        summary=SUMMARY,
        classes=CLASSES,
        confusion=None,
        pathways=None,
    )
    return run_dir, written


def event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in run_dir/tensorboard as (step, value) pairs."""
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_every_file_is_written_and_returned(full_run):
    run_dir, written = full_run
    assert written == {name: run_dir / rel for name, rel in (ALWAYS | OPTIONAL).items()}
    assert all(path.exists() for path in written.values())
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    outside_tb = {f for f in files if not f.startswith("tensorboard/")}
    assert outside_tb == {rel for rel in (ALWAYS | OPTIONAL).values() if rel != "tensorboard"}


def test_history_csv_round_trips(full_run):
    run_dir, _ = full_run
    table = read_history(run_dir)
    pd.testing.assert_frame_equal(table, pd.DataFrame(HISTORY))
    assert table["epoch"].dtype.kind == "i"


def test_columns_start_with_epoch_then_first_seen_order(tmp_path):
    history = [{"train_loss": 1.0, "epoch": 1}, {"epoch": 2, "train_loss": 0.5, "lr": 0.01}]
    write_run_outputs(tmp_path, history=history, summary={}, classes=CLASSES, confusion=None, pathways=None)
    table = read_history(tmp_path)
    assert list(table.columns) == ["epoch", "train_loss", "lr"]
    assert math.isnan(table.loc[0, "lr"]) and table.loc[1, "lr"] == 0.01


def test_history_json_has_null_for_nan(full_run):
    run_dir, _ = full_run
    text = (run_dir / "history.json").read_text()
    assert "NaN" not in text
    rows = json.loads(text)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[1]["val_loss"] is None
    assert rows[0] == HISTORY[0]


def test_summary_json_is_the_summary(full_run):
    run_dir, _ = full_run
    assert json.loads((run_dir / "summary.json").read_text()) == SUMMARY


def test_training_history_csv_has_keras_aliases(full_run):
    run_dir, _ = full_run
    table = pd.read_csv(run_dir / "training_history.csv")
    seed_readme_view = table[["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]]
    assert len(seed_readme_view) == len(HISTORY)
    aliases = {"loss": "train_loss", "accuracy": "train_acc", "val_accuracy": "val_acc"}
    for alias, key in aliases.items():
        pd.testing.assert_series_equal(table[alias], table[key], check_names=False)
    pd.testing.assert_frame_equal(table[read_history(run_dir).columns], read_history(run_dir))


def test_training_summary_csv_is_one_flat_row(full_run):
    run_dir, _ = full_run
    table = pd.read_csv(run_dir / "training_summary.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "mc_resnet18" and row["best_epoch"] == 3
    assert row["final.val_acc"] == 0.76 and row["config.lr"] == 0.1
    assert "config.milestones" not in table.columns


def test_pngs_are_valid_images(full_run):
    _, written = full_run
    for name in ("training_curves_png", "confusion_matrix_png", "pathways_png"):
        with Image.open(written[name]) as image:
            image.verify()
        with Image.open(written[name]) as image:
            width, height = image.size
        assert image.format == "PNG"
        assert 300 <= width <= 4000 and 300 <= height <= 4000, (name, image.size)


def test_pathways_json(full_run):
    _, written = full_run
    assert json.loads(written["pathways_json"].read_text()) == PATHWAYS


def test_tensorboard_has_grouped_scalars_at_epoch_steps(full_run):
    run_dir, _ = full_run
    scalars = event_scalars(run_dir)
    assert set(scalars) == {
        "loss/train",
        "loss/val",
        "accuracy/train",
        "accuracy/val",
        "accuracy/val_top5",
        "accuracy/val_mean_class",
        "accuracy/val_rgb_only",
        "accuracy/val_depth_only",
        "lr",
        "perf/epoch_time_s",
        "perf/images_per_s",
    }
    assert [step for step, _ in scalars["loss/train"]] == [1, 2, 3, 4]
    assert [value for _, value in scalars["loss/train"]] == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
    assert [step for step, _ in scalars["loss/val"]] == [1, 3, 4]  # the NaN epoch is skipped
    assert [value for _, value in scalars["accuracy/val_rgb_only"]] == pytest.approx(
        [row["val_acc_rgb_only"] for row in HISTORY]
    )


def test_rewriting_replaces_tensorboard_events(full_run):
    run_dir, _ = full_run
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    for points in event_scalars(run_dir).values():
        assert len(points) <= len(HISTORY)
    assert not list(run_dir.glob(".*"))  # no temporary files or folders left


def test_optional_outputs_left_out_and_stale_ones_removed(plain_run):
    run_dir, written = plain_run
    assert set(written) == set(ALWAYS)
    for rel in OPTIONAL.values():
        assert not (run_dir / rel).exists()
    assert len(read_history(run_dir)) == 3
    assert "accuracy/val_rgb_only" not in event_scalars(run_dir)
    with Image.open(written["training_curves_png"]) as image:
        assert image.format == "PNG"


def test_confusion_of_wrong_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_run_outputs(
            tmp_path, history=HISTORY[:1], summary={}, classes=CLASSES, confusion=[[1, 2], [3, 4]], pathways=None
        )


def test_history_rows_need_an_epoch(tmp_path):
    with pytest.raises(ValueError, match="epoch"):
        write_run_outputs(
            tmp_path, history=[{"train_loss": 1.0}], summary={}, classes=CLASSES, confusion=None, pathways=None
        )


def test_read_history_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match="history.csv"):
        read_history(tmp_path)


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    write_run_outputs(tmp_path, history=HISTORY, summary=SUMMARY, classes=CLASSES, confusion=None, pathways=None)
    before = (tmp_path / "history.csv").read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("raymc.storage.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_run_outputs(tmp_path, history=HISTORY[:2], summary={}, classes=CLASSES, confusion=None, pathways=None)
    assert (tmp_path / "history.csv").read_bytes() == before
    assert not list(tmp_path.glob(".*"))
