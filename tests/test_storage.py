"""raymc.storage: one way to address, read and atomically write files, local or on a URI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest

from raymc import storage


def test_local_paths_become_absolute_and_uris_stay_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.as_uri("runs") == str(tmp_path / "runs")
    assert storage.as_uri("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.join("s3://bucket/runs/", "a", "b.json") == "s3://bucket/runs/a/b.json"


def test_json_round_trips_with_numpy_numbers_and_non_finite_values_as_null(tmp_path):
    path = tmp_path / "deep" / "folder" / "x.json"  # missing folders are made
    assert storage.write_json(path, {"a": np.int64(3), "b": np.float32(0.5), "c": math.nan, "d": [Path("p")]}) == path
    assert storage.read_json(path) == {"a": 3, "b": 0.5, "c": None, "d": ["p"]}
    assert storage.is_file(path) and not storage.is_file(tmp_path / "deep")


def test_a_write_leaves_no_temporary_file(tmp_path):
    storage.write_bytes(tmp_path / "f.bin", b"one")
    storage.write_bytes(tmp_path / "f.bin", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and storage.read_bytes(tmp_path / "f.bin") == b"two"


def test_what_cannot_be_json_is_refused_by_name():
    with pytest.raises(TypeError, match="object"):
        storage.json_bytes({"x": object()})


def test_a_folder_is_uploaded_whole(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "a.txt").write_text("a")
    storage.upload_folder(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst" / "sub" / "a.txt").read_text() == "a"


def test_ray_gets_raymcs_s3_filesystem_with_the_path_inside_it_and_local_paths_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is sent: the filesystem is only built
    path, filesystem = storage.ray_location("s3://bucket/runs")
    assert path == "bucket/runs" and isinstance(filesystem, pyarrow.fs.S3FileSystem)
    assert storage.ray_location(str(tmp_path)) == (str(tmp_path), None)
