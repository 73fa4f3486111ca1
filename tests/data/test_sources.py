"""--data resolution: demo set made once, .mat prepared once, folders as given, bad paths named."""

from __future__ import annotations

import pytest

from raymc.config import TrainConfig
from raymc.data import sources
from raymc.errors import DataError


def test_missing_path_and_wrong_file_type_name_the_flag(tmp_path):
    with pytest.raises(DataError, match="--data .*no such file"):
        sources.resolve_data(TrainConfig(data=str(tmp_path / "nope.mat")))
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(DataError, match="--data .*expected an NYU .mat"):
        sources.resolve_data(TrainConfig(data=str(text)))


def test_splits_with_a_prepared_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="--splits"):
        sources.resolve_data(TrainConfig(data=str(tmp_path), splits="splits.mat"))


def test_prepared_folder_and_uri_pass_through(tmp_path):
    assert sources.resolve_data(TrainConfig(data=str(tmp_path))) == str(tmp_path.resolve())
    assert sources.resolve_data(TrainConfig(data="s3://bucket/nyu10")) == "s3://bucket/nyu10"


def test_demo_mat_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMC_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "DEMO_NYU_SAMPLES", 12)
    first = sources.demo_nyu_mat()
    stamp = first.stat().st_mtime_ns
    assert sources.demo_nyu_mat() == first and first.stat().st_mtime_ns == stamp
    assert not list(first.parent.glob("*.partial-*"))
