"""CLI: turn datasets into Parquet shards for training, or write small demo files.

    python -m raymc.prepare nyu --mat nyu_depth_v2_labeled.mat [--splits splits.mat] --out DIR
    python -m raymc.prepare demo-nyu --out demo.mat [--n 480] [--seed 0]

Every flag accepts dashes or underscores (--test-fraction or --test_fraction).
Each subcommand is one `_add_<name>_parser` function whose parser sets `func`, the runner.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raymc.config import flag_names
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu import DEFAULT_TEST_FRACTION, PROTOCOLS, prepare_nyu
from raymc.errors import RaymcError


def get_args_parser() -> argparse.ArgumentParser:
    """The parser with one subcommand per dataset or demo."""
    parser = argparse.ArgumentParser(
        prog="python -m raymc.prepare", description="Prepare datasets for raymc training."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_nyu_parser(subparsers)
    _add_demo_nyu_parser(subparsers)
    return parser


def _add_nyu_parser(subparsers: argparse._SubParsersAction) -> None:
    """`nyu`: nyu_depth_v2_labeled.mat (+ splits.mat) -> Parquet shards + dataset_info.json."""
    p = subparsers.add_parser("nyu", help="NYU Depth V2 labeled .mat -> Parquet shards")
    p.add_argument(*flag_names("mat"), required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    p.add_argument(
        *flag_names("splits"),
        default=None,
        help="official splits.mat (trainNdxs, testNdxs); without it, a seeded split "
        "that keeps every room on one side",
    )
    p.add_argument(*flag_names("protocol"), default="nyu10", choices=sorted(PROTOCOLS))
    p.add_argument(*flag_names("seed"), type=int, default=0, help="seed of the grouped split")
    p.add_argument(
        *flag_names("test_fraction"),
        dest="test_fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="test share of the grouped split (default 654/1449)",
    )
    p.add_argument(
        *flag_names("image_size"),
        dest="image_size",
        type=int,
        default=None,
        help="scale the shorter side down to this many pixels (default: full size)",
    )
    p.add_argument(*flag_names("out"), required=True, help="output folder")
    p.add_argument(*flag_names("overwrite"), action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run_nyu)


def _add_demo_nyu_parser(subparsers: argparse._SubParsersAction) -> None:
    """`demo-nyu`: a small learnable .mat in the real NYU layout."""
    p = subparsers.add_parser("demo-nyu", help="write a small demo NYU Depth V2 .mat")
    p.add_argument(*flag_names("out"), required=True, help="the .mat file to write")
    p.add_argument(*flag_names("n"), type=int, default=480, help="number of frames")
    p.add_argument(*flag_names("seed"), type=int, default=0)
    p.add_argument(*flag_names("height"), type=int, default=120)
    p.add_argument(*flag_names("width"), type=int, default=160)
    p.set_defaults(func=_run_demo_nyu)


def _run_nyu(args: argparse.Namespace) -> None:
    """Prepare NYU and print the counts per split."""
    info = prepare_nyu(
        args.mat,
        args.out,
        splits=args.splits,
        protocol=args.protocol,
        seed=args.seed,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
        image_size=args.image_size,
    )
    print(
        f"prepared {info['num_samples']} NYU Depth V2 samples ({info['protocol']}, "
        f"{info['split_source']} split, {info['image_height']}x{info['image_width']}) in {args.out}"
    )
    for split, counts in info["counts"].items():
        per_class = ", ".join(f"{name} {n}" for name, n in counts.items())
        print(f"  {split:5s} {sum(counts.values()):5d}: {per_class}")


def _run_demo_nyu(args: argparse.Namespace) -> None:
    """Write the demo .mat and say where."""
    path = write_demo_nyu(args.out, n=args.n, seed=args.seed, height=args.height, width=args.width)
    print(f"wrote a demo NYU Depth V2 file ({args.n} frames, {args.height}x{args.width}) to {path}")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user error prints `error: <message>` on one line and returns 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except RaymcError as e:
        print(f"error: {str(e).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
