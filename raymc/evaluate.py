"""`python -m raymc.evaluate --checkpoint PATH [--data PATH] [--split test] [--out DIR]`.

Scores a checkpoint on a split with `raymc.api.evaluate` (Ray Data batch inference), prints the
metrics and writes OUT/metrics.json, OUT/per_class.csv and OUT/plots/ (confusion matrix,
pathways, a grid of predictions).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from raymc import storage
from raymc.api import add_inference_arguments, evaluate, load_model, open_data, show_predictions
from raymc.errors import cli_main
from raymc.figures import confusion_figure, pathways_figure, save_png
from raymc.flags import flag_names


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.evaluate",
        description="Evaluate a trained checkpoint with Ray Data batch inference: loss, top-1/top-5, "
        "mean class and per-class accuracy, confusion matrix, pathway accuracy, a grid of predictions.",
    )
    add_inference_arguments(parser)
    parser.add_argument(*flag_names("out"), default="eval", metavar="DIR", help="output folder (default: ./eval)")
    return parser


def per_class_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per class: samples, correct, accuracy (empty where the split has no sample)."""
    confusion = metrics["confusion"]
    return pd.DataFrame(
        {
            "class": metrics["classes"],
            "samples": [sum(row) for row in confusion],
            "correct": [row[i] for i, row in enumerate(confusion)],
            "accuracy": list(metrics["per_class_acc"].values()),
        }
    )


def write_evaluation(out: str | Path, metrics: dict[str, Any], predictions: Figure) -> list[Path]:
    """Write metrics.json, per_class.csv and the plots under out; return the paths written."""
    out = Path(out)
    title = {"model": metrics["model"], "dataset": metrics["data"]}
    written = [
        storage.write_json(out / "metrics.json", metrics),
        storage.write_bytes(out / "per_class.csv", per_class_frame(metrics).to_csv(index=False).encode()),
        save_png(
            out / "plots" / "confusion_matrix.png", confusion_figure(metrics["confusion"], metrics["classes"], title)
        ),
        save_png(out / "plots" / "predictions.png", predictions),
    ]
    if metrics["pathways"]:
        figure = pathways_figure(metrics["pathways"], num_classes=len(metrics["classes"]))
        written.append(save_png(out / "plots" / "pathways.png", figure))
    return written


def _print_metrics(metrics: dict[str, Any]) -> None:
    print(
        f"{metrics['model']} ({metrics['checkpoint']}) on {metrics['data']}, {metrics['split']} split, "
        f"{metrics['num_samples']} samples"
    )
    print("  ".join(f"{key} {metrics[key]:.4f}" for key in ("loss", "acc", "acc5", "mean_class_acc") if key in metrics))
    if metrics["pathways"]:
        print("pathways: " + "  ".join(f"{name} {value:.4f}" for name, value in metrics["pathways"].items()))


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = load_model(args.checkpoint)
    data = open_data(model, args.data, args.split, shared_fs=args.shared_fs)
    metrics = evaluate(model, data, batch_size=args.batch_size)
    written = write_evaluation(args.out, metrics, show_predictions(model, data))
    _print_metrics(metrics)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
