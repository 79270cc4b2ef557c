"""`demo`: the whole pipeline on the embedded default, no download."""

from __future__ import annotations

from pathlib import Path


def cmd_demo(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, steps=args.steps)
    print(result.table.read_text(encoding="utf-8"))
    print(f"comparison grid: {result.grid}\nloss plot: {result.loss_plot}\nLoRA: {result.lora}\n"
          f"stereotype table: {result.table}")
    return 0


def register(verbs) -> None:
    """The `demo` verb."""
    demo = verbs.add_parser("demo", help="the whole pipeline on the embedded default, no download")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    demo.add_argument("--steps", type=int, default=300, help="SCoFT training steps")
    demo.set_defaults(func=cmd_demo)
