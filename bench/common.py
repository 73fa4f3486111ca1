"""Shared helpers of the benchmarks: repeated timings and their statistics, CPU time and peak
memory of the process tree, timed ingest epochs run in turn, a private local Ray instance, cached
demo data, machine facts and the result table.

Every benchmark measures raymc side by side with the code a user would write by hand, in one run,
and reports ratios; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

import raymc  # noqa: F401  (binds a local Ray to 127.0.0.1; must come before `import ray`)
from raymc.batches import training_batches

MIB = 2**20
# Ray's own helper processes carry ray:: titles too, but are no workers.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
TRAIN_WORKER = "ray::RayTrainWorker"


# --------------------------------------------------------------------------------------------
# Timings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Median, min and max of repeated measurements."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def ratio(self, other: Stats) -> float:
        """median / other's median."""
        return self.median / other.median


def stats(values: list[float] | tuple[float, ...]) -> Stats:
    if not values:
        raise ValueError("no measurements")
    return Stats(tuple(float(v) for v in values))


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` gives seconds since the block began (frozen at its end)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def process_role(proc: psutil.Process, main_cmdline: list[str]) -> str:
    """What a descendant of this process is: a DataLoader worker (forked, same command line), the
    Ray Train worker, another Ray worker (Ray Data tasks, actors, idle pool), or a Ray system
    process (raylet, GCS, dashboard, agents)."""
    cmdline = proc.cmdline()
    title = cmdline[0] if cmdline else proc.name()
    if cmdline == main_cmdline:
        return "loader_workers"
    if title.startswith(TRAIN_WORKER):
        return "train_worker"
    if title.startswith("ray::") and not title.startswith(RAY_AGENTS):
        return "ray_workers"
    return "ray_system"


@dataclass
class MemoryPeaks:
    """Peak resident memory (bytes) per role: the sum over the role's processes at one sample,
    and the largest single process seen. Sums count pages shared between processes (libraries,
    Ray's object store, copy-on-write after fork) once per process."""

    total: dict[str, int] = field(default_factory=dict)
    single: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)

    def update(self, sample: dict[str, list[int]]) -> None:
        for role, sizes in sample.items():
            self.total[role] = max(self.total.get(role, 0), sum(sizes))
            self.single[role] = max(self.single.get(role, 0), max(sizes, default=0))
            self.processes[role] = max(self.processes.get(role, 0), len(sizes))

    def merge(self, other: MemoryPeaks) -> None:
        for role in other.total:
            self.total[role] = max(self.total.get(role, 0), other.total[role])
            self.single[role] = max(self.single.get(role, 0), other.single[role])
            self.processes[role] = max(self.processes.get(role, 0), other.processes[role])

    def mib(self, role: str) -> float:
        return self.total.get(role, 0) / MIB


class ResourceMeter:
    """Measures this process and all its descendants (a local Ray instance started here is among
    them: raylet, its workers) over a block: resident memory sampled every `interval` seconds in a
    thread (`peaks`), and CPU seconds used per role (`cpu`), which says how much work a pipeline
    needs per sample however loaded the machine is. Processes that end within the block are
    counted through their parent's reaped-children times."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peaks = MemoryPeaks()
        self.cpu: dict[str, float] = {}
        self._me = psutil.Process()
        self._cmdline = self._me.cmdline()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-meter", daemon=True)
        self._cpu_start: dict[int, tuple[str, float, str, float]] = {}

    def _processes(self) -> Iterator[tuple[psutil.Process, str]]:
        yield self._me, "main"
        for proc in self._me.children(recursive=True):
            try:
                yield proc, process_role(proc, self._cmdline)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def sample(self) -> None:
        roles: dict[str, list[int]] = {}
        for proc, role in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                roles.setdefault(role, []).append(proc.memory_info().rss)
        self.peaks.update(roles)

    def _cpu_snapshot(self) -> dict[int, tuple[str, float, str, float]]:
        """pid -> (role, own CPU s, role of its reaped children, their CPU s)."""
        snapshot = {}
        for proc, role in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                t = proc.cpu_times()
                reaped_role = "loader_workers" if role == "main" else "ray_workers"  # raylet reaps Ray workers
                snapshot[proc.pid] = (role, t.user + t.system, reaped_role, t.children_user + t.children_system)
        return snapshot

    def _cpu_delta(self, end: dict[int, tuple[str, float, str, float]]) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for pid, (role, own, reaped_role, reaped) in end.items():
            _, own0, _, reaped0 = self._cpu_start.get(pid, (role, 0.0, reaped_role, 0.0))
            cpu[role] = cpu.get(role, 0.0) + own - own0
            cpu[reaped_role] = cpu.get(reaped_role, 0.0) + reaped - reaped0
        for pid, (role, own0, _, _) in self._cpu_start.items():
            if pid not in end:  # ended: its parent's reaped time holds all of it, also what came before
                cpu[role] = cpu.get(role, 0.0) - own0
        return cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ResourceMeter:
        self._cpu_start = self._cpu_snapshot()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.cpu = self._cpu_delta(self._cpu_snapshot())


# --------------------------------------------------------------------------------------------
# Ray, data, machine
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[float | None]:
    """A private local Ray (127.0.0.1, `num_cpus` CPUs) for the block, shut down at its end; yields
    its start-up time in seconds, or None when one was already running (bench/run.py shares one)."""
    if ray.is_initialized():
        yield None
        return
    with stopwatch() as elapsed:
        # Workers' output stays in Ray's log files; their errors still reach us as exceptions.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield elapsed()
    finally:
        ray.shutdown()


def cache_dir() -> Path:
    """Where generated benchmark data is kept between runs: $RAYMC_BENCH_CACHE or ~/.cache/raymc/bench."""
    default = Path.home() / ".cache" / "raymc" / "bench"
    path = Path(os.environ.get("RAYMC_BENCH_CACHE", default)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached(path: Path, make: Callable[[Path], object], *, in_child: bool = False) -> tuple[Path, float]:
    """`make(partial_path)` once, then reuse `path`; returns (path, seconds spent making it now).
    A half-made result (interrupted run) is never reused: it is made under another name first.
    `in_child` makes it in a forked process (it must not use Ray), so that the memory it took does
    not stay with this process and inflate the memory measured later."""
    if path.exists():
        return path, 0.0
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with stopwatch() as elapsed:
        if in_child:
            child = multiprocessing.get_context("fork").Process(target=make, args=(partial,))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"making {path} failed (exit code {child.exitcode})")
        else:
            make(partial)
    os.replace(partial, path)
    return path, elapsed()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def machine() -> str:
    """Cores, memory, GPU and library versions, for RESULTS.md."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {memory:.0f} GiB memory, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}"
    )


# --------------------------------------------------------------------------------------------
# One epoch of ingest, timed
# --------------------------------------------------------------------------------------------


LOADER_ROLES = ("main", "loader_workers")
RAY_ROLES = ("main", "ray_workers", "ray_system")


@dataclass(frozen=True)
class Epoch:
    """What one measured pass delivered and cost."""

    samples: int
    seconds: float
    memory: MemoryPeaks
    cpu_seconds: float  # CPU time of the processes doing the arm's work (see ResourceMeter)
    consumer_cpu_seconds: float = math.nan  # of which this process's: iterating, collating (decoding, if it does)
    system_cpu_seconds: float = 0.0  # of which Ray's system processes' (raylet, GCS, dashboard, agents)

    @property
    def per_second(self) -> float:
        return self.samples / self.seconds

    @property
    def cpu_ms_per_sample(self) -> float:
        return 1e3 * self.cpu_seconds / self.samples

    @property
    def consumer_cpu_ms_per_sample(self) -> float:
        return 1e3 * self.consumer_cpu_seconds / self.samples

    @property
    def system_cpu_ms_per_sample(self) -> float:
        return 1e3 * self.system_cpu_seconds / self.samples


def ray_data_epoch(
    train: ray.data.Dataset, clock, *, batch: int, epoch: int, collate_fn: NumpyBatchCollateFn | None = None
) -> Epoch:
    """One pass over a raymc training dataset, iterated as a CPU training worker does
    (`raymc.batches.training_batches`, with the collate step `collate_fn`)."""
    ray.get(clock.set.remote(epoch))
    batches = training_batches(
        train, batch_size=batch, seed=0, epoch=epoch, device=torch.device("cpu"), collate_fn=collate_fn
    )
    return _consume(batches, count=lambda b: len(b["label"]), roles=RAY_ROLES)


def loader_epoch(loader: torch.utils.data.DataLoader, *, epoch: int) -> Epoch:
    """One pass over a DataLoader yielding (images, ..., labels)."""
    return _consume(loader, count=lambda b: len(b[-1]), roles=LOADER_ROLES)


def _consume(batches: Iterable, *, count: Callable[[object], int], roles: tuple[str, ...]) -> Epoch:
    """A whole pass, timed from the start of its iteration: DataLoader workers start and Ray Data
    executions begin inside the measurement."""
    samples = 0
    with ResourceMeter() as meter, stopwatch() as elapsed:
        for b in batches:
            samples += count(b)
    cpu = sum(meter.cpu.get(role, 0.0) for role in roles)
    system = meter.cpu.get("ray_system", 0.0) if "ray_system" in roles else 0.0
    return Epoch(samples, elapsed(), meter.peaks, cpu, meter.cpu.get("main", 0.0), system)


@dataclass
class ArmResult:
    """Every timed epoch of one arm."""

    per_second: Stats
    cpu_ms_per_sample: Stats
    consumer_cpu_ms_per_sample: Stats  # this process's share of cpu_ms_per_sample
    memory: MemoryPeaks
    system_cpu_ms_per_sample: Stats  # Ray's system processes' share of cpu_ms_per_sample

    @property
    def feeding_cpu_ms_per_sample(self) -> Stats:
        """CPU ms per sample of the processes doing the feeding work (Ray Data's task workers, or
        DataLoader workers): the arm's CPU less this process's and Ray's system processes'."""
        return stats(
            [
                total - consumer - system
                for total, consumer, system in zip(
                    self.cpu_ms_per_sample.values,
                    self.consumer_cpu_ms_per_sample.values,
                    self.system_cpu_ms_per_sample.values,
                    strict=True,
                )
            ]
        )


def interleave(arms: dict[str, Callable[[int], Epoch]], reps: int) -> dict[str, ArmResult]:
    """An untimed warm-up (epoch 0, a whole pass: every worker process started, imports done,
    files cached) of each arm, then `reps` rounds of one epoch of each, in turn, so
    that a change of machine load hits every arm alike. Arms take the epoch number."""
    for measure in arms.values():
        measure(0)
    epochs: dict[str, list[Epoch]] = {name: [] for name in arms}
    for epoch in range(1, reps + 1):
        for name, measure in arms.items():
            epochs[name].append(measure(epoch))
    results = {}
    for name, runs in epochs.items():
        memory = MemoryPeaks()
        for run in runs:
            memory.merge(run.memory)
        results[name] = ArmResult(
            stats([r.per_second for r in runs]),
            stats([r.cpu_ms_per_sample for r in runs]),
            stats([r.consumer_cpu_ms_per_sample for r in runs]),
            memory,
            stats([r.system_cpu_ms_per_sample for r in runs]),
        )
    return results


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured arm of one benchmark: a metric's statistics and the memory it took, read from
    the roles of `MemoryPeaks`: `consumer` receives the batches or trains ("main": this process,
    "train_worker": the Ray Train worker), `workers` feed it ("loader_workers", "ray_workers")."""

    bench: str
    arm: str
    metric: str  # e.g. "samples/s", "s"
    stats: Stats
    memory: MemoryPeaks | None = None
    note: str = ""
    consumer: str = "main"
    workers: str | None = None
    cpu: Stats | None = None  # CPU ms per sample

    @classmethod
    def throughput(cls, bench: str, arm: str, result: ArmResult, note: str = "", *, workers: str) -> Row:
        """A throughput row (samples/s) with its CPU cost and memory."""
        return cls(
            bench,
            arm,
            "samples/s",
            result.per_second,
            result.memory,
            note,
            workers=workers,
            cpu=result.cpu_ms_per_sample,
        )


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(rows: list[Row]) -> str:
    """A Markdown table: timings (median, min - max, n), CPU time per sample of all the processes
    doing an arm's work (median), and peak resident memory in MiB of the
    consumer (the process that receives the batches or trains: the Ray Train worker for raymc
    training, else this process), of the workers feeding it (DataLoader or Ray workers, summed;
    process count in brackets) and of Ray's system processes."""
    lines = [
        "| bench | arm | metric | median | min - max | n | CPU ms/sample | consumer RSS | workers RSS (procs) "
        "| Ray system RSS | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        consumer = workers = system = ""
        if r.memory is not None:
            m = r.memory
            consumer = f"{m.mib(r.consumer):.0f}"
            if r.workers and m.total.get(r.workers):
                workers = f"{m.mib(r.workers):.0f} ({m.processes[r.workers]})"
            if m.total.get("ray_system") and (r.workers == "ray_workers" or r.consumer == "train_worker"):
                system = f"{m.mib('ray_system'):.0f}"
        s = r.stats
        cpu = f"{_fmt(r.cpu.median)}" if r.cpu else ""
        lines.append(
            f"| {r.bench} | {r.arm} | {r.metric} | {_fmt(s.median)} | {_fmt(s.min)} - {_fmt(s.max)} | "
            f"{len(s.values)} | {cpu} | {consumer} | {workers} | {system} | {r.note} |"
        )
    return "\n".join(lines)


def ratio_line(ratios: dict[str, float]) -> str:
    return "ratios: " + " ".join(f"{name}={value:.2f}" for name, value in ratios.items())


def main(
    run: Callable[[argparse.Namespace], tuple[list[Row], dict[str, float]]],
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    argv: list[str] | None = None,
) -> int:
    """What each benchmark script does on its own: run it, print its table and its ratios last."""
    args = parse_args(argv)
    print(f"load average {load_average()}", flush=True)
    rows, ratios = run(args)
    print(table(rows))
    print(f"load average {load_average()}")
    print(ratio_line(ratios))
    return 0
