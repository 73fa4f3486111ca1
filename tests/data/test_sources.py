"""--data resolution: demo set made once, .mat prepared once, folders detected, bad paths named."""

from __future__ import annotations

import json

import pytest

from raymc.config import TrainConfig
from raymc.data import sources
from raymc.data.demo import write_demo_imagenet
from raymc.errors import ConfigError, DataError


def prepared_folder(path, dataset: str):
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset_info.json").write_text(json.dumps({"dataset": dataset, "classes": [], "counts": {}}))
    return path


def test_missing_path_and_wrong_file_type_name_the_flag(tmp_path):
    with pytest.raises(DataError, match="--data .*no such file"):
        sources.resolve_data(TrainConfig(data=str(tmp_path / "nope.mat")))
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(DataError, match="--data .*expected an NYU .mat"):
        sources.resolve_data(TrainConfig(data=str(text)))
    with pytest.raises(DataError, match="neither a prepared folder"):
        sources.resolve_data(TrainConfig(data=str(tmp_path)))


def test_prepared_folders_are_detected_with_their_default_model(tmp_path):
    config, source = sources.resolve_data(TrainConfig(data=str(prepared_folder(tmp_path / "n", "nyu"))))
    assert (source.kind, source.prepared, config.model, config.dataset) == ("nyu", True, "mc_resnet18", "nyu")
    config, source = sources.resolve_data(TrainConfig(data=str(prepared_folder(tmp_path / "i", "imagenet"))))
    assert (source.kind, config.model) == ("imagenet", "sd_resnet50")


def test_image_folder_is_detected_and_scanned_once(tmp_path):
    root = write_demo_imagenet(tmp_path / "imagenet", classes=2, per_class=4, val_per_class=1, image_size=(40, 30))
    config, source = sources.resolve_data(TrainConfig(data=str(root), model="sd_resnet101"))
    assert (source.kind, source.prepared, config.model) == ("imagenet", False, "sd_resnet101")
    assert len(source.folder_index.classes) == 2


def test_contradictions_are_refused(tmp_path):
    nyu = str(prepared_folder(tmp_path / "n", "nyu"))
    with pytest.raises(ConfigError, match="--dataset imagenet"):
        sources.resolve_data(TrainConfig(data=nyu, dataset="imagenet"))
    with pytest.raises(ConfigError, match="--model sd_resnet50 does not fit nyu"):
        sources.resolve_data(TrainConfig(data=nyu, model="sd_resnet50"))
    with pytest.raises(DataError, match="--splits"):
        sources.resolve_data(TrainConfig(data=nyu, splits="splits.mat"))


def test_demo_mat_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMC_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "DEMO_NYU_SAMPLES", 12)
    first = sources.demo_nyu_mat()
    stamp = first.stat().st_mtime_ns
    assert sources.demo_nyu_mat() == first and first.stat().st_mtime_ns == stamp
    assert not list(first.parent.glob("*.partial-*"))
