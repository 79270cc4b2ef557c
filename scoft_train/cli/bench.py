"""`bench train|negatives|rscorrector|memory|distributed`: side-by-side measurements in one run
(scoft_train/bench.py)."""

from __future__ import annotations

import argparse
import json


def cmd_bench_train(args) -> int:
    from ..bench import bench_train

    print(bench_train(steps=args.repeats, warmup=args.warmup, threads=args.threads, sd15=args.sd15,
                      resolution=args.resolution, device=args.device).report())
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


def cmd_bench_memory(args) -> int:
    from ..bench import bench_memory, measure_memory_step

    if args.one:  # one row, in this (fresh) process: a JSON line for the parent
        precision = args.precision or "no"
        print(json.dumps(measure_memory_step(args.one, args.checkpointing, precision, args.resolution, args.tiny,
                                             args.device, args.threads, args.denoise_steps)))
        return 0
    print(bench_memory(args.resolution, args.tiny, args.device, args.threads, args.denoise_steps).report())
    return 0


def cmd_bench_distributed(args) -> int:
    from ..bench import bench_distributed, distributed_worker

    if args.worker:
        row = distributed_worker(args.steps, args.warmup, args.batch_size, args.lora_out, args.threads)
        if row is not None:
            print(json.dumps(row))
        return 0
    print(bench_distributed(args.steps, args.warmup, args.batch_size, (1, args.processes), args.threads).report())
    return 0


def register(verbs) -> None:
    """The `bench` verb with `train`, `negatives`, `rscorrector`, `memory` and `distributed`."""
    bench = verbs.add_parser("bench", help="benchmarks (side-by-side ratios in one run)")
    what = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    train = what.add_parser("train", help="plain LoRA step vs FT+MPC steps (tiny model, or --sd15)")
    train.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    train.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    train.add_argument("--sd15", action="store_true",
                       help="the full SD 1.5 architecture with random weights (no download) instead of the tiny "
                            "model: real-size ratios; on CPU use --repeats 1 --warmup 1 (minutes per branch step)")
    train.add_argument("--resolution", type=int, default=None,
                       help="image side with --sd15 (default 128 on CPU, 512 on CUDA)")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
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
    memory = what.add_parser(
        "memory", help="peak memory of one FT and one FT+MPC branch step, SD 1.5 architecture (random weights)",
        description="Peak memory of one optimizer step (FT; FT+MPC with the decoded-generation branch), with and "
                    "without gradient checkpointing, and with bf16 autocast where CUDA allows it. The full SD 1.5 "
                    "architecture with random weights from the bundled config (no download); each row in a fresh "
                    "process. CPU: resident set (VmHWM reset before the step), 256 px by default; CUDA: "
                    "torch.cuda.max_memory_allocated, 512 px by default.")
    memory.add_argument("--tiny", action="store_true", help="the tiny test model instead (64 px): checks the code path")
    memory.add_argument("--resolution", type=int, default=None, help="image side (default 256 on CPU, 512 on CUDA)")
    memory.add_argument("--device", default="cpu", help="cpu or cuda")
    memory.add_argument("--denoise-steps", type=int, default=2,
                        help="branch denoising steps (default 2: the no-grad steps hold no activations, so the "
                             "peak is that of the reference 20; only the seconds grow)")
    memory.add_argument("--one", choices=("FT", "FT+MPC branch"), help=argparse.SUPPRESS)
    memory.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    memory.add_argument("--precision", choices=("no", "bf16", "fp16"), help=argparse.SUPPRESS)
    memory.set_defaults(func=cmd_bench_memory)
    processes = what.add_parser(
        "distributed", help="steps/s of training with 1 vs N processes (accelerate, tiny model)",
        description="Steps/s of the same FT+M training (tiny model, CPU, gloo) in one process and in N processes "
                    "through accelerate's launcher, and the largest difference between their LoRAs. On a machine "
                    "with few shared cores this shows correctness, not speed-up.")
    processes.add_argument("--processes", type=int, default=2, help="processes of the data-parallel run")
    processes.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    processes.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    processes.add_argument("--batch-size", type=int, default=4, help="global batch (a multiple of --processes)")
    processes.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    processes.add_argument("--lora-out", help=argparse.SUPPRESS)
    processes.set_defaults(func=cmd_bench_distributed)
    for parser in (train, negatives, rscorrector):
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    for parser in (memory, processes):
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (per process)")
