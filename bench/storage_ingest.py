"""Object storage against local disk: raymc's ImageNet prepare and training ingest on the demo
ImageNet folder, once from this machine's disk and once from an S3-compatible server.

    python bench/storage_ingest.py --quick     # 402 train + 50 val files of about 160 x 120 (~1.5 min on 2 cores)
    python bench/storage_ingest.py             # 2,002 train + 50 val files (~2 min, +1 to write them once)

Run it from the repository root: the server is the tests' (`tests.s3_server.running_moto`: moto's
server mode on 127.0.0.1, `pip install -e ".[test]"`), reached through the real clients via
AWS_ENDPOINT_URL, which is set (with dummy credentials) before Ray starts, so every Ray worker has
it. The demo folder (`raymc.data.demo.write_demo_imagenet`, with its odd and bad files) is written
locally once (cached) and uploaded as it is into a fresh bucket; each pair of arms reads the same
bytes:

- prepare: `prepare_imagenet(folder, out, overwrite=True)`, local folder -> local Parquet against
  S3 folder -> S3 Parquet (Ray tasks read every file, decode it and write their shard straight to
  the target; on S3 a new generation and its marker). Images/s counts every file read.
- ingest: one training epoch of `build_datasets(...)["train"]` (decode, RandomResizedCrop, flip,
  colour jitter, in Ray Data tasks), iterated as the training loop does, from the prepared folder
  (the one the prepare arms wrote) and from the ImageFolder read directly, each local and on S3.

After an untimed warm-up of each arm, the two prepare arms take turns, then the four ingest arms,
so that a change of machine load hits all alike. The server runs on the same cores as Ray and its
CPU time is reported apart (`server CPU ms/image`, not in `CPU ms/sample`); its memory is among
Ray system RSS. A server on 127.0.0.1 is not a cloud network: no latency or bandwidth limit, but a
slow Python server per request.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import psutil
import ray
from common import ArmResult, Epoch, Row

from raymc import storage
from raymc.config import DEMO_DEFAULTS, TrainConfig
from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet import ImageFolderIndex, scan_image_folder
from raymc.data.imagenet_prepare import prepare_imagenet
from raymc.data.pipeline import DataSource, build_datasets, data_spec, dataset_info, start_epoch_clock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests` (the S3 server) is imported from the repository root
    sys.path.insert(0, str(REPO))

BENCH = "storage"
SEED = 0
IMAGE_SIZE = (160, 120)  # the demo's default (width, height), each side varied +-20%
VAL_PER_CLASS = 5


@contextlib.contextmanager
def s3_environment(endpoint: str) -> Iterator[None]:
    """AWS_ENDPOINT_URL and the tests' dummy credentials in this process's environment for the
    block (Ray started inside it passes them to every worker), restored afterwards."""
    from tests.s3_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY

    values = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": TEST_REGION,
    }
    cleared = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    saved = {name: os.environ.get(name) for name in (*values, *cleared)}
    os.environ.update(values)
    for name in cleared:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_process(endpoint: str) -> psutil.Process:
    """The moto server process (a child of this one) listening at `endpoint`."""
    port = endpoint.rsplit(":", 1)[-1]
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if "moto.server" in cmdline and port in cmdline:
                return proc
    raise RuntimeError(f"no moto server process for {endpoint} among this process's children")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class ServerCpu:
    """The server's CPU time per timed pass of each arm, taken out of the arm's own CPU time (the
    server is a child of this process, so the ResourceMeter counts it among Ray's system processes)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.ms_per_image: dict[str, list[float]] = {}

    def measured(self, name: str, measure: Callable[[int], Epoch]) -> Callable[[int], Epoch]:
        def run(epoch: int) -> Epoch:
            start = cpu_seconds(self.proc)
            result = measure(epoch)
            used = cpu_seconds(self.proc) - start
            if not result.samples:
                raise RuntimeError(f"{name}: a pass delivered no images (fewer train images than --batch?)")
            if epoch > 0:  # epoch 0 is interleave's warm-up
                self.ms_per_image.setdefault(name, []).append(1e3 * used / result.samples)
            return dataclasses.replace(result, cpu_seconds=max(0.0, result.cpu_seconds - used))

        return run

    def note(self, name: str) -> str:
        return f"server CPU {common.stats(self.ms_per_image[name]).median:.3g} ms/image"


def demo_folder(classes: int, per_class: int) -> Path:
    """The demo ImageNet folder, as `raymc.prepare demo-imagenet` writes it (bad files included), cached."""
    stem = f"storage_demo_imagenet_{classes}x{per_class}_{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"

    def write(path: Path) -> None:
        write_demo_imagenet(
            path, classes=classes, per_class=per_class, val_per_class=VAL_PER_CLASS, seed=SEED, image_size=IMAGE_SIZE
        )

    root, _ = common.cached(common.cache_dir() / stem, write, in_child=True)
    return root


def timed_scan(root: str) -> tuple[ImageFolderIndex, float]:
    with common.stopwatch() as elapsed:
        index = scan_image_folder(root)
    return index, elapsed()


def prepare_arm(data_dir: str, out: str, files: int) -> Callable[[int], Epoch]:
    """One whole `prepare_imagenet` run (overwriting the last one's output), timed and metered."""

    def run(epoch: int) -> Epoch:
        with common.ResourceMeter() as meter, common.stopwatch() as elapsed:
            prepare_imagenet(data_dir, out, overwrite=True)
        cpu = sum(meter.cpu.get(role, 0.0) for role in common.RAY_ROLES)
        return Epoch(files, elapsed(), meter.peaks, cpu)

    return run


def ingest_arm(source: DataSource, config: TrainConfig, clock) -> Callable[[int], Epoch]:
    """One training epoch of raymc's Ray Data pipeline over `source`."""
    train = build_datasets(source, data_spec(dataset_info(source)), config, clock)["train"]
    return lambda epoch: common.ray_data_epoch(train, clock, batch=config.batch, epoch=epoch)


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    from tests.s3_server import running_moto

    if ray.is_initialized():
        raise RuntimeError("bench/storage_ingest.py starts its own Ray (its workers need AWS_ENDPOINT_URL)")
    root = demo_folder(args.classes, args.per_class)
    config = TrainConfig(
        image_size=args.image_size, batch=args.batch, seed=SEED, crop_scale=DEMO_DEFAULTS["crop_scale"]
    )
    with (
        running_moto() as server,
        s3_environment(server.endpoint),
        tempfile.TemporaryDirectory(prefix="raymc-bench-") as tmp,
        common.ray_session(args.cpus) as ray_start_s,
    ):
        meter = ServerCpu(server_process(server.endpoint))
        bucket = server.new_bucket()  # through boto3, the real client
        local = {"folder": str(root), "prepared": str(Path(tmp) / "prepared")}
        s3 = {"folder": f"s3://{bucket}/imagenet-demo", "prepared": f"s3://{bucket}/imagenet-demo-pq"}
        with common.stopwatch() as upload_s:
            storage.upload_folder(root, s3["folder"])
        local_index, local_scan_s = timed_scan(local["folder"])
        s3_index, s3_scan_s = timed_scan(s3["folder"])
        files = sum(len(rows) for rows in local_index.rows.values())
        if sum(len(rows) for rows in s3_index.rows.values()) != files:
            raise RuntimeError(f"{s3['folder']} lists other files than {root}")

        prepare = common.interleave(
            {
                "prepare local": meter.measured(
                    "prepare local", prepare_arm(local["folder"], local["prepared"], files)
                ),
                "prepare s3": meter.measured("prepare s3", prepare_arm(s3["folder"], s3["prepared"], files)),
            },
            args.reps,
        )
        clock = start_epoch_clock()
        sources = {
            "parquet local": DataSource("imagenet", local["prepared"]),
            "parquet s3": DataSource("imagenet", s3["prepared"]),
            "folder local": DataSource("imagenet", local["folder"], folder_index=local_index),
            "folder s3": DataSource("imagenet", s3["folder"], folder_index=s3_index),
        }
        ingest = common.interleave(
            {name: meter.measured(name, ingest_arm(source, config, clock)) for name, source in sources.items()},
            args.reps,
        )
    results: dict[str, ArmResult] = {**prepare, **ingest}
    train_images = len(local_index.rows["train"])
    setup = {
        "prepare local": f"{files} files (train + val, 2 bad) ~{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {args.cpus} CPUs",
        "parquet local": f"{train_images} train files -> {args.image_size}, batch {args.batch}",
        "folder local": f"listing {local_scan_s:.2f} s local, {s3_scan_s:.2f} s S3 (one-off)",
        "prepare s3": f"upload of the folder {upload_s():.1f} s (one-off)"
        + (f"; Ray start {ray_start_s:.1f} s" if ray_start_s is not None else ""),
    }
    arms = {
        "prepare local": "prepare: local folder -> local Parquet",
        "prepare s3": "prepare: S3 folder -> S3 Parquet",
        "parquet local": "ingest: local Parquet -> Ray Data",
        "parquet s3": "ingest: S3 Parquet -> Ray Data",
        "folder local": "ingest: local ImageFolder -> Ray Data",
        "folder s3": "ingest: S3 ImageFolder -> Ray Data",
    }
    rows = []
    for name, arm in arms.items():
        note = "; ".join(text for text in (setup.get(name), meter.note(name)) if text)
        rows.append(Row.throughput(BENCH, arm, results[name], note, workers="ray_workers"))
    ratios = {
        f"{pair}_s3_local": results[f"{pair} s3"].per_second.ratio(results[f"{pair} local"].per_second)
        for pair in ("prepare", "parquet", "folder")
    }
    return rows, ratios


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred images (about 1.5 minutes on 2 cores)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, help="usable train images per class (default 40 quick, 200 full)")
    parser.add_argument("--image-size", type=int, default=DEMO_DEFAULTS["image_size"], help="crop side")
    parser.add_argument("--batch", type=int, default=DEMO_DEFAULTS["batch"])
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs")
    parser.add_argument("--reps", type=int, default=3, help="timed passes of each arm (after one warm-up)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    if args.per_class is None:
        args.per_class = 40 if args.quick else 200
    return args


def moto_missing() -> bool:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401  (needs the [server] extra: flask, werkzeug)
    except ImportError:
        return True
    return False


if __name__ == "__main__":
    if moto_missing():
        print('bench/storage_ingest.py needs moto[server] and boto3: pip install -e ".[test]"', file=sys.stderr)
        sys.exit(2)
    sys.exit(common.main(run, parse_args))
