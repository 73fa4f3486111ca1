"""Training epochs to reach a target validation accuracy: Optuna (TPE) + ASHA against random search
that trains every trial to the end, over the same space, trial budget and seeds.

    python bench/tune_asha_vs_random.py --quick      # demo NYU set, 8 trials x 4 epochs, one seed
    python bench/tune_asha_vs_random.py              # 16 trials x 8 epochs, seeds 0 1 2

Epochs are counted in the order they finished (wall clock), over all trials, up to the first
epoch whose val_acc reaches the target. The default target is 90% of the lower of the two
searches' best val_acc, so that both reach it; --target sets it. Prints one line per search and
the ratio random / ASHA (above 1: ASHA + TPE needed fewer epochs).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time

import pandas as pd

from raymc.results import Results
from raymc.tune import SearchSettings, load_space, run_search
from raymc.tune.cli import experiment_config

METRIC = "val_acc"
SEARCHES = {"asha+tpe": {"sampler": "tpe", "scheduler": "asha"}, "random": {"sampler": "random", "scheduler": "fifo"}}


def epochs_to_target(results: Results, target: float) -> float:
    """Epochs trained, in the order they finished, until one reaches the target (inf if none)."""
    table = results.epochs.sort_values(["timestamp", "trial_id", "epoch"]).reset_index(drop=True)
    reached = table.index[table[METRIC] >= target]
    return float(reached[0] + 1) if len(reached) else math.inf


def run(kind: str, seed: int, args: argparse.Namespace, out: str) -> tuple[Results, float]:
    space = load_space(args.space)
    flags = {"seed": seed, "out": out, "name": f"bench-{kind}-seed{seed}"}
    if args.epochs:
        flags["epochs"] = args.epochs
    config = experiment_config(flags, yaml_path=None, space=space, metric=METRIC)
    settings = SearchSettings(space=args.space, num_samples=args.num_samples, metric=METRIC, **SEARCHES[kind])
    started = time.perf_counter()
    results = run_search(config, settings, space)
    return results, time.perf_counter() - started


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 trials of the demo space's 4 epochs, seed 0")
    parser.add_argument("--space", default="demo_nyu")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, help=f"{METRIC} to reach (default: 90%% of the lower best)")
    parser.add_argument("--out", help="where the experiments go (default: a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per trial
    if args.quick:
        args.num_samples, args.epochs, args.seeds = 8, None, [0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        for seed in args.seeds:
            found = {kind: run(kind, seed, args, out) for kind in SEARCHES}
            target = args.target or 0.9 * min(r.trials[f"best_{METRIC}"].max() for r, _ in found.values())
            for kind, (results, wall) in found.items():
                rows.append(
                    {
                        "seed": seed,
                        "search": kind,
                        "target": target,
                        "epochs_to_target": epochs_to_target(results, target),
                        "total_epochs": int(results.trials["epochs_run"].sum()),
                        f"best_{METRIC}": results.trials[f"best_{METRIC}"].max(),
                        "pruned": int((results.trials["status"] == "pruned").sum()),
                        "wall_s": round(wall),
                    }
                )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    totals = table.groupby("search")[["epochs_to_target", "total_epochs", "wall_s"]].sum()
    ratio = totals.loc["random"] / totals.loc["asha+tpe"]
    print(
        f"\nrandom / asha+tpe: {ratio['epochs_to_target']:.2f}x epochs to reach the target, "
        f"{ratio['total_epochs']:.2f}x epochs in all, {ratio['wall_s']:.2f}x wall time "
        f"({len(args.seeds)} seed(s), {args.num_samples} trials each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
