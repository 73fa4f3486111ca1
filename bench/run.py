"""Run the CPU benchmarks side by side in one local Ray instance and print one table.

    python bench/run.py --quick     # about 5 minutes on 2 idle cores (plus one-off demo data)
    python bench/run.py             # full sizes

1. NYU ingest: raymc's Ray Data pipeline vs the seed plan's h5py Dataset + DataLoader.
2. ImageNet ingest: raymc from the JPEG folder and from Parquet vs torchvision ImageFolder + DataLoader.
3. Training overhead: a raymc epoch (1 Ray Train worker) vs a plain PyTorch loop.
Peak resident memory of the consumer and of the workers feeding it is in the table's columns.
Each figure is the median of --reps repetitions (min - max beside it). The last line holds the
ratios: nyu and imagenet_* are raymc / alternative samples per second (above 1: raymc is faster),
overhead is raymc / plain epoch time (below 1.10 is the target), deterministic is raymc with / without
--deterministic epoch time; decode_cpu_ms and device_decode_cpu_ms are Ray Data's CPU ms per delivered
ImageNet image with decode on the host and with --decode-on device (the Ray workers running Ray
Data's tasks, the device figure under a consumer that keeps up; Ray's system processes are
reported apart in the table).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import imagenet_ingest
import nyu_ingest
import train_overhead
from common import Row, stats

BENCHES = {"nyu": nyu_ingest, "imagenet": imagenet_ingest, "overhead": train_overhead}
# The last line: ratios, then imagenet's Ray Data CPU ms per delivered image with decode on the
# host and with --decode-on device (Ray Data's task workers only; bench/imagenet_ingest.py).
RATIO_ORDER = (
    "nyu",
    "imagenet_parquet",
    "imagenet_folder",
    "overhead",
    "deterministic",
    "decode_cpu_ms",
    "device_decode_cpu_ms",
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: each benchmark under 3 minutes on 2 cores")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (at least 3)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray = DataLoader workers")
    parser.add_argument("--only", nargs="+", choices=tuple(BENCHES), default=list(BENCHES), help="benchmarks to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.reps < 3:
        raise SystemExit("error: --reps must be at least 3 (figures are medians of 3 or more)")
    flags = [*(["--quick"] if args.quick else []), "--reps", str(args.reps), "--cpus", str(args.cpus)]
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}  {common.machine()}")
    print(f"load average before: {common.load_average()}", flush=True)
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    with common.stopwatch() as total, common.ray_session(args.cpus) as ray_start_s:
        for name in args.only:
            bench = BENCHES[name]
            bench_rows, bench_ratios = bench.run(bench.parse_args(flags))
            rows += bench_rows
            ratios.update(bench_ratios)
            print(f"{name} done ({total():.0f} s), load average {common.load_average()}", flush=True)
    rows.append(Row("all", "Ray start-up (shared instance)", "s", stats([ray_start_s or 0.0])))
    print(common.table(rows))
    print(f"load average after: {common.load_average()}; total {total():.0f} s")
    print(common.ratio_line({k: ratios[k] for k in RATIO_ORDER if k in ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
