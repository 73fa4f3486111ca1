"""ImageNet through the same loop: the seed script's command line on the demo ImageFolder, and
the prepared-Parquet path with --cache and --decode-on device, each a real 2-worker Ray Train run on CPU."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
import torchvision

from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet_prepare import prepare_imagenet
from raymc.train import main

pytestmark = pytest.mark.integration

SMALL = ["--image-size", "32", "--val-resize", "36", "--batch", "8", "--warmup-epochs", "0", "--lr", "0.02"]


@pytest.fixture(scope="module")
def demo_imagenet(tmp_path_factory):
    """6 classes x 6 train images (+ the demo's CMYK, grayscale, PNG, truncated and non-image files)."""
    root = tmp_path_factory.mktemp("imagenet")
    return write_demo_imagenet(root / "demo", classes=6, per_class=6, val_per_class=2, image_size=(64, 48))


def test_seed_script_command_trains_on_the_image_folder(demo_imagenet, tmp_path, ray_session):
    argv = [
        "--dataset",
        "imagenet",
        "--data_dir",
        str(demo_imagenet),
        "--out",
        str(tmp_path),
        "--depth",
        "50",
        "--sd",
        "1",
        "--pL",
        "0.5",
        "--epochs",
        "2",
        "--mixup",
        "0.2",
        "--label_smoothing",
        "0.1",
        "--weight_decay",
        "1e-4",
        "--no_mixed_precision",
        "--seed",
        "42",
        "--name",
        "seed",
        *SMALL,
    ]
    assert main(argv) == 0
    run = tmp_path / "seed"
    history = pd.read_csv(run / "training_history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_acc5"} <= set(history.columns)
    assert (run / "training_summary.csv").is_file() and list((run / "tensorboard").glob("events.*"))
    best = torch.load(run / "best_model.pt", weights_only=True)
    assert best["model"] == "sd_resnet50" and best["model_kwargs"]["pL"] == 0.5
    assert best["classes"] == sorted(best["classes"])  # wnids in torchvision ImageFolder order
    # the checkpoint is torchvision's: it loads strictly into torchvision.models.resnet50
    torchvision.models.resnet50(num_classes=6).load_state_dict(best["state_dict"], strict=True)


def test_prepared_parquet_with_cache_and_bad_image_policy(demo_imagenet, tmp_path, ray_session, capsys):
    info = prepare_imagenet(demo_imagenet, tmp_path / "prepared", max_side=64)
    assert info["bad_images"] == 2  # the demo's truncated JPEG and its non-image file
    argv = [
        "--data",
        str(tmp_path / "prepared"),
        "--out",
        str(tmp_path / "runs"),
        "--model",
        "sd_resnet50",
        "--epochs",
        "1",
        "--cache",
        "--decode-on",
        "device",  # the cache holds the encoded rows; the workers decode and augment each batch
        "--name",
        "cached",
        *SMALL,
    ]
    assert main(argv) == 0
    summary = pd.read_json(tmp_path / "runs" / "cached" / "summary.json", typ="series")
    assert summary["num_train"] == sum(info["counts"]["train"].values())
    # reading the folder directly with --on-bad-image fail stops at the first bad file, named
    failing = [
        "--data",
        str(demo_imagenet),
        "--out",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--on-bad-image",
        "fail",
        "--name",
        "strict",
        *SMALL,
    ]
    capsys.readouterr()
    assert main(failing) == 2
    error = capsys.readouterr().err
    assert re.search(r"error: training run strict failed: \S+\.JPEG: bad image \(", error), error
    assert "--on-bad-image skip" in error
