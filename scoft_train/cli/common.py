"""Helpers shared by the verb modules: model and sampling options, prompt files, loading
the model bundle, and one option per field of a settings dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import load_config_file
from ..imagefile import WHITE
from ..settings import specs

DTYPES = ("float32", "float16", "bfloat16")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="default",
                       help="'default' (the embedded bias-lab world model), 'tiny' (a random test model), a diffusers "
                            "folder, or a single-file .safetensors checkpoint")
    group.add_argument("--model-config", default=None,
                       help="single-file only: bundled config name (sd15, sd21) or a local diffusers folder; "
                            "default: detected from the checkpoint")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype of the frozen model")


def load_bundle(args):
    """The model named by the options of `add_model_args`."""
    import torch

    from ..models import load_model

    return load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device, config=args.model_config)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    from ..sampling import SCHEDULERS

    group = parser.add_argument_group("sampling")
    group.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    group.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    group.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    group.add_argument("--steps", type=int, default=20, help="denoising steps")
    group.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    group.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="diffusers sampler")
    group.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    group.add_argument("--lora-strength", type=float, default=1.0, help="LoRA scale (0 = baseline)")


def read_prompts(args) -> list[str]:
    """The --prompt values, then the non-empty lines of --prompts-file (UTF-8; a byte-order
    mark, as Notepad writes, is dropped)."""
    prompts = list(args.prompt)
    if args.prompts_file:
        lines = args.prompts_file.read_text(encoding="utf-8-sig").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise SystemExit("error: give at least one --prompt or a --prompts-file")
    return prompts


def sampling_kwargs(args) -> dict:
    return dict(steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, size=args.size)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Options of a training run: output folder, settings file, resume, image side, augmentation."""
    parser.add_argument("--out", type=Path, required=True, help="output folder: LoRA, loss history/plot, checkpoints")
    parser.add_argument("--config", type=Path, help="settings file (.json/.yaml); command-line options override it")
    parser.add_argument("--resume", default=None, help="checkpoint path, or 'latest' (newest in OUT/checkpoints)")
    parser.add_argument("--resolution", type=int, default=None, help="training image side (default: the model's)")
    parser.add_argument("--random-crop", action="store_true", help="random instead of center crop")
    parser.add_argument("--flip", action="store_true", help="random horizontal flip")
    parser.add_argument("--preview-every", type=int, default=0, metavar="N",
                        help="every N steps, write OUT/previews/step_XXXXXX.png: fixed prompts from fixed seeds, base "
                             "vs the model being trained, and the losses so far (default 0: off; each costs a sampling run)")


def rgb(text: str) -> tuple[int, int, int]:
    """'R,G,B' (each 0..255) -> a tuple, for argparse."""
    parts = text.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) <= 255 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: write R,G,B with each 0..255, e.g. 255,255,255")
    return tuple(int(part) for part in parts)


def add_ccub_read_args(parser: argparse.ArgumentParser) -> None:
    """How a CCUB folder is read: the background under transparency, and long captions."""
    parser.add_argument("--background", type=rgb, default=WHITE,
                        help="R,G,B that transparent image areas are composited onto (default 255,255,255)")
    parser.add_argument("--strict-captions", action="store_true",
                        help="refuse captions longer than CLIP's 77 tokens instead of reporting them")


def ccub_read_options(args) -> dict:
    """`load_ccub` keyword arguments from the options of `add_ccub_read_args`."""
    return {"background": args.background, "strict_captions": args.strict_captions}


def resume_from(args) -> bool | str | None:
    """--resume as the trainers take it: True for 'latest', else the checkpoint path (or None)."""
    return True if args.resume == "latest" else args.resume


def add_dataclass_args(group, cls, skip: tuple[str, ...] = ()) -> None:
    """One option per declared setting of `cls` (None = not given), derived from its
    declaration (settings.py): help, default, range and choices; booleans get --flag / --no-flag."""
    for spec in specs(cls):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if spec.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=spec.help)
            continue
        number = "{}" if spec.kind is int else "{:g}"
        limits = f", {number.format(spec.min)}..{number.format(spec.max)}" if spec.min is not None else ""
        group.add_argument(flag, type=spec.kind, default=None, choices=spec.choices,
                           help=f"{spec.help} (default {spec.default}{limits})")


def dataclass_values(args, cls, skip: tuple[str, ...] = ()) -> dict:
    """The --config file's settings (if given), overridden by the options of `cls`'s fields
    given on the command line (those of `add_dataclass_args`)."""
    values = load_config_file(args.config) if args.config else {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if field.name not in skip and value is not None:
            values[field.name] = value
    return values
