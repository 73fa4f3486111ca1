"""`python -m raymc.results PATH`: a tuning experiment or a training run folder as DataFrames,
a table of the best trials, and plots.

    from raymc.results import load
    r = load("runs/tune-demo_nyu-1a2b3c4d")   # or a run folder such as runs/<name>
    r.trials        # one row per trial: status, epochs_run, best_/final_<metric>, config/..., Tune's last results
    r.epochs        # one row per trial and epoch: every metric the loop reported
    r.best_config   # the best trial's parameters, settings, metric and best_model.pt path

A run folder reads as an experiment of one trial (its history is `.epochs`), so the same table
and plots work for both. This module does not import ray.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from raymc import storage
from raymc.config import TrainConfig, with_params
from raymc.errors import DataError, cli_main
from raymc.figures import epochs_figure, params_figure, save_png, training_curves_figure

if TYPE_CHECKING:
    from ray.tune import Result, ResultGrid

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
EPOCHS_PARQUET = "trials.parquet"
BEST_CONFIG = "best_config.json"
PLOTS = "plots"
DIVERGED = "diverged"  # reported (as 1) by a trial whose training loss stopped being finite
# Columns of Tune's results that say nothing about a trial's training.
TUNE_NOISE = (
    "date",
    "hostname",
    "node_ip",
    "pid",
    "done",
    "checkpoint_dir_name",
    "should_checkpoint",
    "time_since_restore",
    "iterations_since_restore",
    "time_this_iter_s",
    "checkpoint_path",
    "experiment_tag",
)
TUNE_TIMING = ("timestamp", "time_total_s", "training_iteration")  # when each epoch was reported
STATUS = {
    "COMPLETE": "completed",
    "PRUNED": "pruned",
    "FAIL": "error",
    "RUNNING": "unfinished",
    "WAITING": "unfinished",
}


@dataclass
class Results:
    """A tuning experiment (kind "experiment") or one training run (kind "run") as tables."""

    path: str
    kind: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    best_config: dict[str, Any]

    @property
    def metric(self) -> str:
        return self.best_config["metric"]

    @property
    def mode(self) -> str:
        return self.best_config["mode"]

    @property
    def params(self) -> list[str]:
        """The searched parameters (config/... columns, without the prefix)."""
        return [c.removeprefix("config/") for c in self.trials.columns if c.startswith("config/")]

    def top(self, n: int = 10) -> pd.DataFrame:
        """The n best trials by their best epoch's metric, with the columns a reader wants first."""
        best = f"best_{self.metric}"
        columns = ["trial_id", "status", "epochs_run", best, "best_epoch", f"final_{self.metric}"]
        columns += [f"config/{p}" for p in self.params]
        table = self.trials[[c for c in columns if c in self.trials]]
        if best in table:
            table = table.sort_values(best, ascending=self.mode == "min", na_position="last")
        return table.head(n).rename(columns=lambda c: c.removeprefix("config/")).reset_index(drop=True)

    def format_top(self, n: int = 10) -> str:
        """The top-n table as text."""
        table = self.top(n)
        if table.empty:
            return "(no trials reported a result)"
        return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


# ---------------------------------------------------------------- reading


def load(path: str | Path) -> Results:
    """Read an experiment folder (results.parquet) or a run folder (history.csv)."""
    path = str(path).rstrip("/")
    if storage.is_file(storage.join(path, RESULTS_PARQUET)):
        filesystem, root = storage.filesystem(path)
        return Results(
            path=path,
            kind="experiment",
            trials=pq.read_table(f"{root}/{RESULTS_PARQUET}", filesystem=filesystem).to_pandas(),
            epochs=pq.read_table(f"{root}/{EPOCHS_PARQUET}", filesystem=filesystem).to_pandas(),
            best_config=storage.read_json(storage.join(path, BEST_CONFIG)),
        )
    if storage.is_file(storage.join(path, "history.csv")) and storage.is_file(storage.join(path, "summary.json")):
        return _load_run(path)
    interrupted = storage.is_file(storage.join(path, "tuner.pkl"))
    hint = " (an interrupted search: finish it with `python -m raymc.tune ... --resume`)" if interrupted else ""
    raise DataError(
        f"{path}: neither an experiment folder (no {RESULTS_PARQUET}) nor a run folder (no history.csv "
        f"and summary.json){hint}"
    )


def _load_run(path: str) -> Results:
    """A training run as an experiment of one trial, named after its folder."""
    summary = storage.read_json(storage.join(path, "summary.json"))
    history = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(path, "history.csv"))))
    config_file = storage.join(path, "config.json")
    config = storage.read_json(config_file).get("config", {}) if storage.is_file(config_file) else {}
    name, metric = Path(path).name, summary["monitor"]
    history.insert(0, "trial_id", name)
    trial = {
        "trial_id": name,
        "status": "stopped_early" if summary.get("stopped_early") else "completed",
        "epochs_run": summary["epochs_run"],
        f"best_{metric}": summary[f"best_{metric}"],
        "best_epoch": summary["best_epoch"],
        f"final_{metric}": summary["final_metrics"].get(metric),
        "run_dir": path,
        "best_model": f"{path}/best_model.pt",
        **{
            k: v
            for k, v in summary.items()
            if not isinstance(v, (dict, list)) and k not in ("epochs_run", "best_epoch")
        },
    }
    best = {
        "metric": metric,
        "mode": "min" if metric.endswith("loss") else "max",
        "trial_id": name,
        "value": summary[f"best_{metric}"],
        "epoch": summary["best_epoch"],
        "status": trial["status"],
        "config": {},
        "train_config": config,
        "run_dir": path,
        "best_model": trial["best_model"],
    }
    return Results(path=path, kind="run", trials=pd.DataFrame([trial]), epochs=history, best_config=best)


# ---------------------------------------------------------------- writing


def write_experiment(results: Results) -> dict[str, str]:
    """Write results.csv/.parquet, trials.parquet, best_config.json and plots/ into the experiment
    folder (staged locally, then copied, so an s3:// experiment works the same)."""
    with tempfile.TemporaryDirectory() as folder:
        staging = Path(folder)
        storage.write_bytes(staging / RESULTS_CSV, results.trials.to_csv(index=False).encode())
        results.trials.to_parquet(staging / RESULTS_PARQUET, index=False)
        results.epochs.to_parquet(staging / EPOCHS_PARQUET, index=False)
        storage.write_json(staging / BEST_CONFIG, results.best_config)
        plots = draw_plots(results, staging / PLOTS)
        storage.upload_folder(staging, results.path)
    names = [RESULTS_CSV, RESULTS_PARQUET, EPOCHS_PARQUET, BEST_CONFIG, *(f"{PLOTS}/{Path(p).name}" for p in plots)]
    return {name: storage.join(results.path, name) for name in names}


def draw_plots(results: Results, folder: str | Path) -> list[str]:
    """The plots of an experiment (metric per epoch, metric vs each parameter), or a run's
    training curves, written into folder (a local path or URI)."""
    if results.kind == "run":
        summary = results.trials.iloc[0].to_dict()
        curves = training_curves_figure(results.epochs.drop(columns="trial_id"), summary)
        return [save_png(storage.join(folder, "training_curves.png"), curves)]
    paths = [save_png(storage.join(folder, f"{results.metric}_by_epoch.png"), epochs_figure(results))]
    if results.params and not results.trials.empty:
        paths.append(save_png(storage.join(folder, f"{results.metric}_vs_hyperparameters.png"), params_figure(results)))
    return paths


def redraw_plots(results: Results) -> list[str]:
    """Draw the plots again into PATH/plots (e.g. after editing raymc.figures' style)."""
    return draw_plots(results, storage.join(results.path, PLOTS))


# ---------------------------------------------------------------- an experiment's tables from Tune's results


def trial_id_of(result: Result) -> str:
    """A Tune result's trial id: its trial folder is named after it."""
    return Path(result.path).name


def epochs_table(grid: ResultGrid, trials_storage: str) -> pd.DataFrame:
    """Every epoch of every trial: trial_id, epoch, the loop's metrics, and Tune's timing.

    A trial's epochs come from its run folder's history (what was trained, each epoch once,
    also the epochs of a trial interrupted before Tune heard of them); Tune's reports add the
    wall-clock columns, and stand in for a trial without a run folder.
    """
    frames = []
    for result in grid:
        trial_id = trial_id_of(result)
        reported = result.metrics_dataframe
        if reported is not None and not reported.empty and "epoch" in reported:
            reported = reported.drop(
                columns=[c for c in reported.columns if c.startswith("config/") or c in TUNE_NOISE]
            )
            # A resumed trial may report an epoch again; keep its newest report.
            reported = reported.drop_duplicates("epoch", keep="last")
        else:
            reported = None
        history = _run_history(storage.join(trials_storage, trial_id))
        if history is not None and reported is not None:
            extra = ["epoch", *(c for c in TUNE_TIMING + (DIVERGED,) if c in reported)]
            frame = history.merge(reported[extra], on="epoch", how="left")
        else:
            frame = history if history is not None else reported
        if frame is not None:
            frames.append(frame.assign(trial_id=trial_id))
    if not frames:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    table = pd.concat(frames, ignore_index=True).sort_values(["trial_id", "epoch"])
    first = ["trial_id", "epoch"]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def _run_history(run_dir: str) -> pd.DataFrame | None:
    """A published run folder's history (one row per trained epoch), or None."""
    path = storage.join(run_dir, "history.json")
    rows = storage.read_json(path) if storage.is_file(path) else None
    return pd.DataFrame(rows) if rows else None


def experiment_tables(
    grid: ResultGrid, states: Mapping[str, str], *, trials_storage: str, metric: str, mode: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs): one row per trial (Tune's last results + what the search made of it),
    and one row per trial and epoch. `states` is Optuna's state of each trial id."""
    epochs = epochs_table(grid, trials_storage)
    rows = []
    for result in grid:
        trial_id = trial_id_of(result)
        history = epochs[epochs["trial_id"] == trial_id]
        state = states.get(trial_id, "FAIL" if result.error else "RUNNING")
        status = "diverged" if (result.metrics or {}).get(DIVERGED) else STATUS.get(state, state.lower())
        row = {"trial_id": trial_id, "status": status, "epochs_run": len(history)}
        row.update(_metric_summary(history, metric, mode))
        run_dir = storage.join(trials_storage, trial_id)
        row["run_dir"] = run_dir
        row["best_model"] = (
            f"{run_dir}/best_model.pt" if storage.is_file(storage.join(run_dir, "best_model.pt")) else None
        )
        row.update({f"config/{k}": v for k, v in (result.config or {}).items()})
        rows.append(row)
    ours = pd.DataFrame(rows)
    tune_frame = grid.get_dataframe()
    if ours.empty or tune_frame.empty or "trial_id" not in tune_frame:
        return ours, epochs
    tune_frame = tune_frame.drop(
        columns=[c for c in tune_frame.columns if c in TUNE_NOISE or (c in ours and c != "trial_id")]
    )
    return ours.merge(tune_frame, on="trial_id", how="left"), epochs


def _metric_summary(history: pd.DataFrame, metric: str, mode: str) -> dict[str, Any]:
    """best_<metric>, its epoch, and final_<metric> of one trial's epochs."""
    if history.empty or metric not in history:
        return {f"best_{metric}": None, "best_epoch": None, f"final_{metric}": None}
    values = pd.to_numeric(history[metric], errors="coerce")
    finite = values[np.isfinite(values)]
    if finite.empty:  # every epoch's value NaN or infinite (a diverged trial): nothing to rank it by
        return {f"best_{metric}": None, "best_epoch": None, f"final_{metric}": float(values.iloc[-1])}
    best_index = finite.idxmax() if mode == "max" else finite.idxmin()
    return {
        f"best_{metric}": float(values[best_index]),
        "best_epoch": int(history.loc[best_index, "epoch"]),
        f"final_{metric}": float(values.iloc[-1]),
    }


def best_config(trials: pd.DataFrame, *, base: TrainConfig, metric: str, mode: str) -> dict[str, Any]:
    """The best trial by its best --metric epoch: its parameters, all its settings (`base` with
    its parameters), its weights."""
    column = f"best_{metric}"
    if trials.empty or column not in trials or trials[column].isna().all():
        return {"metric": metric, "mode": mode, "trial_id": None}
    best = trials.loc[trials[column].idxmax() if mode == "max" else trials[column].idxmin()]
    params = {
        c.removeprefix("config/"): _plain(best[c])
        for c in trials.columns
        if c.startswith("config/") and not _missing(best[c])
    }
    return {
        "metric": metric,
        "mode": mode,
        "trial_id": best["trial_id"],
        "value": float(best[column]),
        "epoch": int(best["best_epoch"]),
        "status": best["status"],
        "config": params,
        "train_config": with_params(base, params, name=best["trial_id"]).to_dict(),
        "run_dir": best["run_dir"],
        "best_model": best["best_model"],
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for JSON."""
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- command line


def _status_line(results: Results) -> str:
    counts = results.trials["status"].value_counts() if "status" in results.trials else pd.Series(dtype=int)
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.results",
        description="Print the best trials of a tuning experiment (or a training run's epochs) and redraw its plots.",
    )
    parser.add_argument("path", help="experiment folder OUT/NAME of raymc.tune, or a run folder of raymc.train")
    parser.add_argument(
        "--top", type=int, default=10, help="how many trials (or epochs) to print (default: %(default)s)"
    )
    parser.add_argument("--no-plots", "--no_plots", dest="plots", action="store_false", help="do not redraw the plots")
    return parser


def _print_run(results: Results, n: int) -> None:
    trial = results.trials.iloc[0]
    best = results.best_config
    print(
        f"run {trial['trial_id']}: {trial['epochs_run']} epochs ({trial['status']}), "
        f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
    )
    columns = [
        c
        for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_mean_class_acc", "lr")
        if c in results.epochs
    ]
    print(results.epochs[columns].tail(n).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _print_experiment(results: Results, n: int) -> None:
    print(f"experiment {results.path}: {len(results.trials)} trials ({_status_line(results)})")
    print(results.format_top(n))
    best = results.best_config
    if best.get("trial_id"):
        print(f"\nbest: {best['trial_id']}  {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
        print("  " + ", ".join(f"{k}={v}" for k, v in best["config"].items()))
        print(f"  weights: {best['best_model']}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    results = load(args.path)
    (_print_run if results.kind == "run" else _print_experiment)(results, args.top)
    if args.plots:
        for plot in redraw_plots(results):
            print(f"plot: {plot}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
