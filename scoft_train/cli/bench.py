"""`bench train|negatives|rscorrector`: side-by-side timings in one run (scoft_train/bench.py)."""

from __future__ import annotations


def cmd_bench_train(args) -> int:
    from ..bench import bench_train

    print(bench_train(steps=args.repeats, warmup=args.warmup, threads=args.threads).report())
    return 0


def cmd_bench_negatives(args) -> int:
    from ..bench import bench_negatives

    print(bench_negatives(k=args.k, steps=args.steps, batch_size=args.batch_size, threads=args.threads).report())
    return 0


def cmd_bench_rscorrector(args) -> int:
    from ..bench import bench_rscorrector

    print(bench_rscorrector(images=args.images, steps=args.steps, last_k=args.k, m_steps=args.m,
                            repeats=args.repeats, threads=args.threads).report())
    return 0


def register(verbs) -> None:
    """The `bench` verb with `train`, `negatives` and `rscorrector`."""
    bench = verbs.add_parser("bench", help="benchmarks (side-by-side ratios in one run)")
    what = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    train = what.add_parser("train", help="plain LoRA step vs FT+MPC step on the tiny model")
    train.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    train.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    train.set_defaults(func=cmd_bench_train)
    negatives = what.add_parser("negatives", help="batched negatives generation vs one pipeline call per image")
    negatives.add_argument("--k", type=int, default=2, help="negatives per sample image (8 images)")
    negatives.add_argument("--steps", type=int, default=10, help="denoising steps")
    negatives.add_argument("--batch-size", type=int, default=8, help="images per pipeline call, batched variant")
    negatives.set_defaults(func=cmd_bench_negatives)
    rscorrector = what.add_parser(
        "rscorrector", help="extra seconds per image of RS-Corrector sampling vs plain sampling (tiny model)")
    rscorrector.add_argument("--images", type=int, default=4, help="images per run (one batch)")
    rscorrector.add_argument("--steps", type=int, default=20, help="DDIM steps")
    rscorrector.add_argument("--k", type=int, default=4, help="corrected steps")
    rscorrector.add_argument("--m", type=int, default=2, help="gradient steps per corrected step")
    rscorrector.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    rscorrector.set_defaults(func=cmd_bench_rscorrector)
    for parser in (train, negatives, rscorrector):
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
