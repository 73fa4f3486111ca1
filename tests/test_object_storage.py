"""Prepared data sets on object storage, against a real S3-compatible server (moto on 127.0.0.1,
reached through AWS_ENDPOINT_URL by the real pyarrow and boto3 clients): publishing by generation
and marker, reading back through the marker, and each bad-storage case as a one-line error."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import time
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest
import ray

from raymc import prepare, storage
from raymc.config import TrainConfig
from raymc.data import nyu_prepare
from raymc.data.demo import write_demo_imagenet, write_demo_nyu
from raymc.data.imagenet import decode_batch, scan_image_folder
from raymc.data.pipeline import DataSource, data_spec, read_dataset_info, split_files, stored_rows
from raymc.data.publish import GENERATION, MARKER_FILE, live_folder, run_shard_tasks
from raymc.data.sources import resolve_data
from raymc.errors import ConfigError, DataError
from tests.helpers import without_ray_lines
from tests.s3_server import TEST_SECRET_KEY, S3Server, closed_port, running_moto

N, H, W = 64, 48, 64  # 8 shard tasks of one HDF5 chunk each
FAST_S = 30.0  # a hang guard only: a bad endpoint fails in about a second


@pytest.fixture(scope="module")
def mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_nyu(tmp_path_factory.mktemp("s3") / "demo.mat", n=N, height=H, width=W)


@pytest.fixture(scope="module")
def published(ray_session, s3_server: S3Server, mat: Path) -> dict:
    """Demo NYU prepared to S3 once by the CLI (Ray tasks write the shards); its output and objects.
    ray_session comes first, so a Ray it starts lacks the endpoint and the tasks must be given it."""
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/nyu"
    streams = _run_cli(["nyu", "--mat", str(mat), "--out", uri, "--seed", "1"])
    return {"uri": uri, "bucket": bucket, "objects": s3_server.objects(bucket), **streams}


def _run_cli(argv: list[str]) -> dict:
    """prepare.main(argv) with stdout and stderr captured (module fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = prepare.main(argv)
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line a failed CLI printed to stderr, Ray's forwarded log lines aside."""
    captured = capsys.readouterr()
    assert TEST_SECRET_KEY not in captured.out + captured.err
    lines = without_ray_lines(captured.err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------ publish and read back


def test_prepare_nyu_publishes_a_generation_and_reads_back_through_the_marker(published: dict) -> None:
    uri, objects = published["uri"], published["objects"]
    assert published["status"] == 0 and uri in published["stdout"]
    marker = json.loads(objects[f"nyu/{MARKER_FILE}"])
    generation = marker["generation"]
    assert GENERATION.fullmatch(generation)
    files = [key for key in objects if not key.endswith("/")]  # pyarrow's create_dir leaves "folder/" objects
    assert {key.split("/")[1] for key in files if key != f"nyu/{MARKER_FILE}"} == {generation}
    assert live_folder(uri) == f"{uri}/{generation}"

    info = read_dataset_info(uri)
    assert info == json.loads(objects[f"nyu/{generation}/dataset_info.json"])
    assert (info["num_samples"], info["image_height"], info["image_width"], info["seed"]) == (N, H, W, 1)
    filesystem, _ = storage.filesystem(uri)
    rows = 0
    for split in ("train", "test"):
        files = split_files(uri, split)
        assert files and all(f.startswith(f"{uri}/{generation}/{split}-") for f in files)
        table = pq.read_table([storage.filesystem(f)[1] for f in files], filesystem=filesystem)
        assert set(table["split"].to_pylist()) == {split}
        assert len(table) == sum(info["counts"][split].values())
        rows += len(table)
    assert rows == N


def test_ray_data_reads_the_shards_through_raymcs_filesystem(published: dict) -> None:
    """The session's Ray started before the S3 server, so its workers lack AWS_ENDPOINT_URL: the
    rows come back only because the read tasks get raymc's filesystem, endpoint and all."""
    uri = published["uri"]
    source = DataSource("nyu", uri)
    spec = data_spec(read_dataset_info(uri))
    rows = stored_rows(source, spec, "train", TrainConfig(data=uri))
    assert rows.count() == spec.num_train
    assert "AWS_ENDPOINT_URL" not in ray.get(ray.remote(lambda: dict(os.environ)).remote())


def test_no_credential_is_written_or_printed(published: dict) -> None:
    assert published["objects"] and all(TEST_SECRET_KEY.encode() not in data for data in published["objects"].values())
    assert TEST_SECRET_KEY not in published["stdout"] + published["stderr"]
    assert set(storage.worker_env()) == {"AWS_ENDPOINT_URL"}  # what Ray tasks are handed: no key


def test_shard_tasks_get_the_drivers_endpoint_and_no_key(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = "http://127.0.0.1:9"  # a value no Ray worker inherited
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)

    @ray.remote
    def seen(_: object) -> tuple[str | None, dict]:
        return os.environ.get("AWS_ENDPOINT_URL"), ray.get_runtime_context().runtime_env

    ((task_endpoint, runtime_env),) = run_shard_tasks(seen, [None])
    assert task_endpoint == endpoint and runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == endpoint
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(runtime_env["env_vars"])
    assert TEST_SECRET_KEY not in json.dumps(runtime_env)


def test_overwrite_flips_the_marker_last_and_a_failed_one_keeps_the_old_data_set(
    ray_session, s3_server: S3Server, mat: Path, tmp_path: Path
) -> None:
    uri = f"s3://{s3_server.new_bucket()}/nyu"
    old = nyu_prepare.prepare_nyu(mat, uri, seed=1)
    old_folder = live_folder(uri)
    with pytest.raises(DataError, match="already holds data"):
        nyu_prepare.prepare_nyu(mat, uri, seed=2)

    with pytest.raises(DataError, match="truncated or damaged"):  # shard tasks fail mid-way
        nyu_prepare.prepare_nyu(_damaged_last_chunk(mat, tmp_path / "damaged.mat"), uri, seed=2, overwrite=True)
    assert live_folder(uri) == old_folder and read_dataset_info(uri) == old
    assert storage.names(uri) == sorted([MARKER_FILE, old_folder.rsplit("/", 1)[1]])  # the failed one is gone
    assert all(f.startswith(old_folder) for f in split_files(uri, "train"))

    new = nyu_prepare.prepare_nyu(mat, uri, seed=2, overwrite=True)
    new_folder = live_folder(uri)
    assert new_folder != old_folder and read_dataset_info(uri) == new and new["seed"] == 2
    assert storage.names(uri) == sorted([MARKER_FILE, new_folder.rsplit("/", 1)[1]])  # old deleted after the flip


def _damaged_last_chunk(mat: Path, path: Path) -> Path:
    """A copy of the .mat whose last `images` chunk is garbage: its index reads fine, and only
    the shard task reading that chunk fails, after others have written theirs."""
    data = bytearray(mat.read_bytes())
    with h5py.File(mat, "r") as f:
        chunks = f["images"].id
        last = chunks.get_chunk_info(chunks.get_num_chunks() - 1)
    data[last.byte_offset + 16 : last.byte_offset + last.size - 16] = bytes(last.size - 32)
    path.write_bytes(bytes(data))
    return path


def test_prepare_nyu_reads_the_mat_in_place_on_s3(ray_session, s3_server: S3Server, mat: Path, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    remote = f"s3://{bucket}/nyu_depth_v2_labeled.mat"
    storage.upload_folder(mat, remote)
    info = nyu_prepare.prepare_nyu(remote, f"s3://{bucket}/nyu", seed=1)
    local = nyu_prepare.prepare_nyu(mat, tmp_path / "local", seed=1)
    assert info["source"] == remote and {**info, "source": local["source"]} == local

    damaged = f"s3://{bucket}/damaged.mat"  # the task reading the bad chunk names the URI
    storage.upload_folder(_damaged_last_chunk(mat, tmp_path / "damaged.mat"), damaged)
    with pytest.raises(DataError, match=f"{damaged}: truncated or damaged file"):
        nyu_prepare.prepare_nyu(damaged, f"s3://{bucket}/from-damaged")
    with pytest.raises(DataError, match=f"s3://{bucket}/missing.mat: mat file not found"):
        nyu_prepare.prepare_nyu(f"s3://{bucket}/missing.mat", f"s3://{bucket}/from-missing")


# ------------------------------------------------------------------------------ what readers refuse


def test_a_prefix_without_marker_is_refused_as_unfinished(s3_server: S3Server) -> None:
    uri = f"s3://{s3_server.new_bucket()}/nyu"
    storage.write_bytes(f"{uri}/20260101T000000Z-0123abcd/train-00000.parquet", b"left by a killed prepare")
    storage.write_json(f"{uri}/20260101T000000Z-0123abcd/dataset_info.json", {"dataset": "nyu"})
    with pytest.raises(DataError, match="preparation did not finish.*run it again") as error:
        read_dataset_info(uri)
    assert str(error.value).startswith(uri) and "\n" not in str(error.value)
    with pytest.raises(DataError, match="preparation did not finish"):
        split_files(uri, "train")

    storage.write_bytes(f"{uri}/{MARKER_FILE}", b"{truncated")
    with pytest.raises(DataError, match=f"{uri}/{MARKER_FILE}: damaged marker.*--overwrite"):
        read_dataset_info(uri)


def test_an_object_is_no_output_prefix(s3_server: S3Server) -> None:
    uri = f"s3://{s3_server.new_bucket()}/taken"
    storage.write_bytes(uri, b"a file, not a prefix")
    with pytest.raises(DataError, match="output path is an object, not a prefix"):
        nyu_prepare.prepare_nyu("unused.mat", uri, overwrite=True)


def test_a_missing_prefix_and_a_missing_bucket_are_named(s3_server: S3Server, capsys: pytest.CaptureFixture) -> None:
    missing = f"s3://{s3_server.new_bucket()}/no-such-data"
    with pytest.raises(DataError, match="no prepared data set.*check the path"):
        read_dataset_info(missing)
    with pytest.raises(DataError, match="bucket 'raymc-no-such-bucket' does not exist"):
        read_dataset_info("s3://raymc-no-such-bucket/nyu")

    assert prepare.main(["nyu", "--mat", "unused.mat", "--out", "s3://raymc-no-such-bucket/nyu"]) == 2
    line = _error_line(capsys)  # refused before the .mat is read or Ray starts
    assert "s3://raymc-no-such-bucket/nyu" in line and "create the bucket" in line


def test_access_denied_is_named_with_what_to_check(mat: Path, capsys: pytest.CaptureFixture) -> None:
    admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin-secret"}
    with running_moto(iam_checks=3) as server, pytest.MonkeyPatch.context() as env:
        iam = server.client("iam", **admin)
        iam.create_user(UserName="nobody")  # no policy: every request is denied
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        server.client(**admin).create_bucket(Bucket="locked")
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

        with pytest.raises(ConfigError, match=r"s3://locked/nyu/_LATEST.json: access denied.*credentials"):
            read_dataset_info("s3://locked/nyu")
        assert prepare.main(["nyu", "--mat", str(mat), "--out", "s3://locked/nyu"]) == 2
    line = _error_line(capsys)
    assert "s3://locked/nyu: access denied" in line and key["SecretAccessKey"] not in line


def test_an_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the object store at http://127.0.0.1"):
        read_dataset_info("s3://bucket/nyu")
    assert prepare.main(["nyu", "--mat", "unused.mat", "--out", "s3://bucket/nyu"]) == 2
    assert time.monotonic() - start < FAST_S
    assert "s3://bucket/nyu: cannot reach" in _error_line(capsys)


# ------------------------------------------------------------------------------ demo writers and ImageNet


def test_demo_writers_and_imagenet_prepare_write_to_s3(
    ray_session, s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bucket = s3_server.new_bucket()
    assert (
        prepare.main(["demo-nyu", "--out", f"s3://{bucket}/demo.mat", "--n", "6", "--height", "8", "--width", "8"]) == 0
    )
    local_mat = write_demo_nyu(tmp_path / "demo.mat", n=6, height=8, width=8)
    sizes = ["--classes", "2", "--per-class", "3", "--val-per-class", "1", "--width", "32", "--height", "32"]
    assert prepare.main(["demo-imagenet", "--out", f"s3://{bucket}/imagenet", *sizes]) == 0
    folder = write_demo_imagenet(tmp_path / "imagenet", classes=2, per_class=3, val_per_class=1, image_size=(32, 32))
    objects = {key: data for key, data in s3_server.objects(bucket).items() if not key.endswith("/")}
    assert objects.pop("demo.mat") == local_mat.read_bytes()  # the same bytes as written locally
    local_files = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert objects == local_files

    uri = f"s3://{bucket}/imagenet-pq"
    assert prepare.main(["imagenet", "--data-dir", str(folder), "--out", uri]) == 0
    info = read_dataset_info(uri)
    assert info["num_samples"] == 2 * 3 + 2 * 1 and info["bad_images"] == 2
    bad_images = storage.join(live_folder(uri), "bad_images.csv")
    assert bad_images in capsys.readouterr().out
    assert len(storage.read_bytes(bad_images).decode().splitlines()) == 1 + 2
    assert split_files(uri, "train") and split_files(uri, "val")

    # The same tree read where it is on the bucket: listed, labelled and prepared as the local copy.
    remote = f"s3://{bucket}/imagenet"
    local_index, remote_index = scan_image_folder(folder), scan_image_folder(remote)
    assert remote_index.root == remote and remote_index.classes == local_index.classes
    for split, rows in local_index.rows.items():
        as_remote = [dataclasses.replace(r, path=r.path.replace(str(folder), remote)) for r in rows]
        assert remote_index.rows[split] == as_remote
    assert prepare.main(["imagenet", "--data-dir", remote, "--out", f"{uri}-from-s3"]) == 0
    from_s3 = read_dataset_info(f"{uri}-from-s3")
    assert {**from_s3, "source": None} == {**info, "source": None} and from_s3["source"] == remote
    bad_from_s3 = storage.read_bytes(storage.join(live_folder(f"{uri}-from-s3"), "bad_images.csv"))
    assert bad_from_s3 == storage.read_bytes(bad_images)  # the same files named, relative to the folder


def test_an_image_folder_on_s3_is_data_and_a_mat_file_there_is_prepared_first(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    sizes = {"classes": 2, "per_class": 2, "val_per_class": 1, "image_size": (32, 32)}
    folder = write_demo_imagenet(f"s3://{bucket}/imagenet", **sizes)
    config, source = resolve_data(TrainConfig(data=str(folder)))
    assert (source.kind, source.location, config.model) == ("imagenet", f"s3://{bucket}/imagenet", "sd_resnet50")
    rows = source.folder_index.rows["train"]
    assert [len(source.folder_index.rows[split]) for split in ("train", "val")] == [2 * 2 + 2, 2]  # + 2 bad files
    batch = {"path": [r.path for r in rows], "label": [r.label for r in rows], "index": [r.index for r in rows]}
    decoded = decode_batch(batch)  # read through the bucket's filesystem; the bad files are skipped
    assert len(decoded["rgb"]) == 2 * 2 and all(image.shape[2] == 3 for image in decoded["rgb"])
    with pytest.raises(DataError, match=r"--data s3://\S+\.mat: .*python -m raymc.prepare nyu --mat"):
        resolve_data(TrainConfig(data=f"s3://{bucket}/raw/nyu_depth_v2_labeled.mat"))
    with pytest.raises(DataError, match="no prepared data set"):
        resolve_data(TrainConfig(data=f"s3://{bucket}/nothing-here"))
