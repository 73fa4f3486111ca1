"""Transfer from raymc's own ImageNet run: mc_resnet50 on the demo NYU set from scratch against
starting both trunks from an sd_resnet50 that raymc trained on a demo ImageNet folder, each with and
without an exponential moving average of the weights (--ema-decay).

    python bench/transfer.py --quick     # 32 px, 480 demo NYU frames, seed 0 (about 10 minutes on 2 cores)
    python bench/transfer.py             # 48 px, 800 frames, seeds 0 1 2 (not yet run; roughly 1.5 h on 2 cores)

A quality benchmark, not a timing one: it runs on its own, not in bench/run.py. Per seed, it first
trains sd_resnet50 with raymc on a demo ImageFolder (`raymc.data.demo.write_demo_imagenet`: small
images whose class is a hue and a stripe direction), then mc_resnet50 on a demo NYU file
(`write_demo_nyu`, prepared once, shared with bench/nyu_ingest.py) twice with the same settings and
seed: from scratch, and `--pretrained <the sd_resnet50 run folder>` (trunks at 0.1x the base learning
rate, head and fusion at the base rate, as raymc does without explicit rates). Both runs keep an EMA
(--ema-decay), which only watches: it never feeds back into training (no gradients, no random numbers
drawn), so a run's raw weights are those of the same run without it, and each run gives the arm with
and without EMA (validated side by side every epoch, `val_*_ema`). Every run goes through
`raymc.fit`, one Ray Train worker, `--cache`, on one local Ray.

Per arm it prints the best validation mean class accuracy of the raw weights and of their average,
the epoch each was first reached, the first epoch at --target or above, the RGB-only and depth-only
accuracy at the raw best epoch (raymc's pathway analysis), the final validation loss, the wall time
raymc recorded (summary.json), and every epoch's figures. The learning rate is raymc's rule
(0.1 x batch / 256), not the demo's 0.05, with which ResNet-50 diverged at batch 16. The demo data
are synthetic: read the figures with the docstring of `raymc.data.demo` at hand.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import nyu_ingest
import pandas as pd

import raymc
from raymc.api import train_config
from raymc.config import DEMO_DEFAULTS
from raymc.data.demo import write_demo_imagenet

SEED = 0  # of the demo data sets (training seeds are --seeds)
MONITOR = "val_mean_class_acc"
ARMS = ("scratch", "pretrained")


@dataclass(frozen=True)
class ArmResult:
    """What one mc_resnet50 run achieved, read from its history."""

    arm: str
    seed: int
    best: float
    best_epoch: int
    best_ema: float | None
    best_ema_epoch: int | None
    rgb_only: float | None
    depth_only: float | None
    final_loss: float
    final_loss_ema: float | None
    epochs: int
    wall_s: float
    curve: str  # the monitor per epoch, in % (EMA after the slash)
    to_target: int | None  # first epoch at --target or above
    to_target_ema: int | None
    note: str = ""


def make_imagenet(classes: int, per_class: int, val_per_class: int, width: int, height: int) -> tuple[Path, float]:
    """The demo ImageFolder (with its bad files: training skips them), cached."""
    stem = f"imagenet_demo_{classes}x{per_class}+{val_per_class}_{width}x{height}"

    def write(path: Path) -> None:
        write_demo_imagenet(
            path,
            classes=classes,
            per_class=per_class,
            val_per_class=val_per_class,
            seed=SEED,
            image_size=(width, height),
        )

    return common.cached(common.cache_dir() / stem, write, in_child=True)


def best_of(history: pd.DataFrame, column: str) -> tuple[float, int]:
    """(highest value of the column, first epoch that reached it)."""
    row = history.loc[history[column].idxmax()]
    return float(row[column]), int(row["epoch"])


def first_epoch(history: pd.DataFrame, column: str, target: float) -> int | None:
    """The first epoch whose value of the column reaches the target (None if none does)."""
    reached = history.loc[history[column] >= target, "epoch"]
    return int(reached.iloc[0]) if len(reached) else None


def arm_result(arm: str, seed: int, run: raymc.RunResult, target: float) -> ArmResult:
    history = run.history
    best, best_epoch = best_of(history, MONITOR)
    has_ema = f"{MONITOR}_ema" in history
    best_ema, best_ema_epoch = best_of(history, f"{MONITOR}_ema") if has_ema else (None, None)
    at_best = history.loc[history["epoch"] == best_epoch].iloc[0]
    last = history.iloc[-1]
    pretrained = run.summary.get("pretrained")
    note = f"{len(pretrained['loaded'])} tensors loaded, {len(pretrained['new'])} new" if pretrained else ""
    columns = [MONITOR, *([f"{MONITOR}_ema"] if best_ema is not None else [])]
    curve = " ".join("/".join(f"{100 * row[c]:.0f}" for c in columns) for _, row in history.iterrows())
    return ArmResult(
        arm=arm,
        seed=seed,
        best=best,
        best_epoch=best_epoch,
        best_ema=best_ema,
        best_ema_epoch=best_ema_epoch,
        rgb_only=float(at_best["val_acc_rgb_only"]) if "val_acc_rgb_only" in at_best else None,
        depth_only=float(at_best["val_acc_depth_only"]) if "val_acc_depth_only" in at_best else None,
        final_loss=float(last["val_loss"]),
        final_loss_ema=float(last["val_loss_ema"]) if "val_loss_ema" in last else None,
        epochs=len(history),
        wall_s=run.summary["wall_time_s"],
        curve=curve,
        to_target=first_epoch(history, MONITOR, target),
        to_target_ema=first_epoch(history, f"{MONITOR}_ema", target) if has_ema else None,
        note=note,
    )


def _pct(value: float | None, epoch: int | None = None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}" + (f" (ep {epoch})" if epoch is not None else "")


def _epoch(epoch: int | None) -> str:
    return "never" if epoch is None else str(epoch)


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def table(results: list[ArmResult]) -> str:
    """A Markdown table, one row per run; accuracies in %."""
    lines = [
        "| seed | arm | best val mean class acc % (epoch) | EMA: best (epoch) | first epoch >= target (EMA) "
        "| RGB-only / depth-only acc % at best | final val loss (EMA) | epochs | wall s | note |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        streams = f"{_pct(r.rgb_only)} / {_pct(r.depth_only)}" if r.rgb_only is not None else ""
        reached = _epoch(r.to_target) + (f" ({_epoch(r.to_target_ema)})" if r.best_ema is not None else "")
        loss = _loss(r.final_loss) + (f" ({_loss(r.final_loss_ema)})" if r.final_loss_ema is not None else "")
        lines.append(
            f"| {r.seed} | {r.arm} | {_pct(r.best, r.best_epoch)} | {_pct(r.best_ema, r.best_ema_epoch)} | "
            f"{reached} | {streams} | {loss} | {r.epochs} | {r.wall_s:.0f} | {r.note} |"
        )
    return "\n".join(lines)


def mean_line(results: list[ArmResult], arm: str) -> str:
    runs = [r for r in results if r.arm == arm]
    best = statistics.mean(r.best for r in runs)
    line = f"{arm}: best {100 * best:.1f}%"
    ema = [r.best_ema for r in runs if r.best_ema is not None]
    if ema:
        line += f", EMA best {100 * statistics.mean(ema):.1f}%"
    return line + f" (mean of {len(runs)} seed(s))"


def run(args: argparse.Namespace) -> int:
    common_settings = {
        **DEMO_DEFAULTS,
        "lr": args.lr,  # the demo's 0.05 (for mc_resnet18, batch 32) makes ResNet-50 diverge at batch 16
        "image_size": args.image_size,
        "batch": args.batch,
        "num_workers": 1,
        "cache": True,
        "monitor": MONITOR,
    }
    pretrain_rows, results, curves, nyu_split = [], [], [], ""
    with (
        common.stopwatch() as total,
        common.ray_session(args.cpus),
        tempfile.TemporaryDirectory() as scratch,
    ):
        out = args.out or scratch
        imagenet, imagenet_s = make_imagenet(
            args.imagenet_classes, args.imagenet_per_class, args.imagenet_val_per_class, *args.imagenet_px
        )
        _, nyu, nyu_s = nyu_ingest.make_data(args.frames, args.nyu_px[1], args.nyu_px[0])  # prepared with Ray
        print(f"demo ImageNet {imagenet} (made in {imagenet_s:.0f} s; 0 = cached)", flush=True)
        print(f"demo NYU {nyu} (prepared in {nyu_s:.0f} s; 0 = cached)", flush=True)
        for seed in args.seeds:
            source = raymc.fit(
                {
                    **common_settings,
                    "data": str(imagenet),
                    "model": "sd_resnet50",
                    "epochs": args.pretrain_epochs,
                    "monitor": "val_acc",
                    "seed": seed,
                    "out": out,
                    "name": f"sd50-demo-imagenet-seed{seed}",
                }
            )
            acc, epoch = best_of(source.history, "val_acc")
            curves.append(
                f"seed {seed} sd_resnet50 val_acc: " + " ".join(f"{100 * v:.0f}" for v in source.history["val_acc"])
            )
            pretrain_rows.append(
                f"| {seed} | sd_resnet50 on demo ImageNet | {100 * acc:.1f} (ep {epoch}) | "
                f"{source.summary['num_train']} train / {source.summary['num_val']} val | "
                f"{source.summary['wall_time_s']:.0f} |"
            )
            print(f"seed {seed}: sd_resnet50 val_acc {100 * acc:.1f}% (epoch {epoch})", flush=True)
            for arm in ARMS:
                settings = {**common_settings, "data": str(nyu), "model": "mc_resnet50", "epochs": args.epochs}
                if arm == "pretrained":
                    settings["pretrained"] = source.run_dir
                if args.ema_decay:
                    settings["ema_decay"] = args.ema_decay
                # raymc's default run name hashes the settings: a rerun with the same --out reuses a finished run
                result = raymc.fit({**settings, "seed": seed, "out": out})
                results.append(arm_result(arm, seed, result, args.target))
                nyu_split = f"{result.summary['num_train']} train / {result.summary['num_val']} val"
                print(f"seed {seed}: {mean_line(results[-1:], arm)}", flush=True)
    lr = train_config({**common_settings, "data": str(nyu), "model": "mc_resnet50"}).base_lr
    setup = (
        f"mc_resnet50 (concat fusion) on {args.frames} demo NYU frames ({nyu_split}, "
        f"{args.nyu_px[0]}x{args.nyu_px[1]} px) at {args.image_size} px, {args.epochs} epochs, batch {args.batch}, "
        f"lr {lr:g} (pretrained: trunks 0.1x), EMA decay {args.ema_decay}; sd_resnet50 on "
        f"{args.imagenet_classes} x {args.imagenet_per_class} demo ImageNet images ({args.imagenet_px[0]}x"
        f"{args.imagenet_px[1]}) at {args.image_size} px, {args.pretrain_epochs} epochs; 1 worker, --cache, "
        f"{args.cpus} CPUs"
    )
    print(f"\n{setup}\n")
    print("| seed | source run | best val acc % (epoch) | images | wall s |\n| ---: | --- | ---: | --- | ---: |")
    print("\n".join(pretrain_rows) + "\n")
    print(table(results) + "\n")
    for arm in ARMS:
        print(mean_line(results, arm))
    print(f"\nper epoch, %: {MONITOR} (/ EMA); val_acc of the source run")
    print("\n".join(curves + [f"seed {r.seed} {r.arm}: {r.curve}" for r in results]))
    print(f"load average {common.load_average()}; total {total():.0f} s")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 px, 480 frames, seed 0 (about 10 minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 quick, 0 1 2 full)")
    parser.add_argument("--image-size", type=int, help="crop side of both trainings (default 32 quick, 48 full)")
    parser.add_argument("--frames", type=int, help="demo NYU frames (default 480 quick, 800 full)")
    parser.add_argument("--nyu-px", type=int, nargs=2, default=(80, 60), metavar=("W", "H"), help="demo NYU frames")
    parser.add_argument("--epochs", type=int, default=12, help="mc_resnet50 epochs on demo NYU")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, help="base learning rate (default: raymc's, 0.1 x batch / 256)")
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.95,
        help="EMA decay per optimizer step (0.95: a horizon of 20 steps; 0: off)",
    )
    parser.add_argument("--imagenet-classes", type=int, default=10)
    parser.add_argument("--imagenet-per-class", type=int, default=80, help="demo ImageNet train images per class")
    parser.add_argument("--imagenet-val-per-class", type=int, default=10)
    parser.add_argument("--imagenet-px", type=int, nargs=2, default=(48, 40), metavar=("W", "H"))
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="sd_resnet50 epochs on demo ImageNet")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (the worker gets half)")
    parser.add_argument("--target", type=float, default=0.9, help="val mean class accuracy to reach (epochs to it)")
    parser.add_argument(
        "--out",
        help="folder of the runs, kept (default: a temporary folder, removed at the end); runs with the same "
        "settings are reused, a source run of other settings in it is refused",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.image_size = args.image_size or (32 if args.quick else 48)
    args.frames = args.frames or (480 if args.quick else 800)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(f"load average {common.load_average()}; {common.machine()}", flush=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
