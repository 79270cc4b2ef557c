"""`train`, `sample` and `compare`: a SCoFT LoRA from a CCUB folder, images with it, and a
baseline-vs-LoRA grid from the same seeds.

`train` runs data parallel when started by `accelerate launch` with more than one process
(or given `--num-processes N`, which re-launches this command line that way): see
scoft_train/distributed.py. Rank 0 writes everything; the other ranks only train.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ..config import BRANCH_SETTINGS, LossWeights, TrainConfig
from .common import (
    add_ccub_read_args, add_dataclass_args, add_model_args, add_run_args, add_sampling_args, ccub_read_options,
    dataclass_values, load_bundle, read_prompts, resume_from, sampling_kwargs,
)


def _add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (and per loss weight), help from the field metadata."""
    group = parser.add_argument_group("training settings (override --config)")
    add_dataclass_args(group, TrainConfig, skip=("weights",))
    for field in dataclasses.fields(LossWeights):
        group.add_argument(f"--w-{field.name}", type=float, default=None,
                           help=f"weight of L_{field.name} (default {field.default})")
    fast = BRANCH_SETTINGS["fast"]
    group.add_argument("--fast", action="store_true",
                       help=f"the cheaper decoded-generation branch: --denoise-steps {fast.denoise_steps} "
                            f"--contrastive-every {fast.contrastive_every} --w-mem 0 (fewer denoising steps in the "
                            "branch, as often as the paper's, without L_M); each, given on the command line or in "
                            "--config, overrides it. README: its measured cost and effect")


def train_config_from_args(args) -> TrainConfig:
    values = dataclass_values(args, TrainConfig, skip=("weights",))
    weights = dict(values.pop("weights", {}) or {})
    for field in dataclasses.fields(LossWeights):
        value = getattr(args, f"w_{field.name}")
        if value is not None:
            weights[field.name] = value
    values["weights"] = weights
    if getattr(args, "fast", False):
        fast = BRANCH_SETTINGS["fast"]
        values.setdefault("denoise_steps", fast.denoise_steps)
        values.setdefault("contrastive_every", fast.contrastive_every)
        if not fast.memorization:
            weights.setdefault("mem", 0.0)
    return TrainConfig.from_dict(values)


def cmd_train(args) -> int:
    from .. import distributed
    from ..data import load_ccub
    from ..progress import tqdm_progress
    from ..stages import train_scoft
    from ..trainer import SCoFTTrainer

    if args.num_processes > 1 and distributed.launched_processes() == 1:
        return distributed.relaunch(args.num_processes, distributed.without_option(sys.argv[1:], "--num-processes"))
    config = train_config_from_args(args)
    processes, args.device = distributed.start(args.device)
    if config.batch_size % processes.world_size:
        raise ValueError(f"--batch-size {config.batch_size} is the global batch; it must be a multiple of the "
                         f"{processes.world_size} processes")
    bundle = load_bundle(args)
    dataset = load_ccub(args.data, resolution=args.resolution or bundle.resolution, center_crop=not args.random_crop,
                        random_flip=args.flip, **ccub_read_options(args),
                        **({"culture_terms": args.culture_terms} if args.culture_terms else {}))
    if not processes.is_main:  # trains its share; rank 0 writes the LoRA, history, plot, previews
        logging.getLogger("scoft_train").setLevel(logging.WARNING)
        trainer = SCoFTTrainer(bundle, dataset, config, args.out)
        resume = resume_from(args)
        if resume:
            trainer.resume(None if resume is True else resume)
        trainer.train()
        distributed.finish(processes)
        return 0
    with tqdm_progress("train") as on_step:
        outputs = train_scoft(bundle, dataset, config, args.out, on_step=on_step, resume=resume_from(args),
                              preview_every=args.preview_every)
    distributed.finish(processes)
    print(f"LoRA: {outputs.lora}\nloss history: {outputs.history_json}\nloss plot: {outputs.loss_plot}")
    if args.preview_every:
        print(f"previews: {args.out / 'previews'}")
    return 0


def cmd_sample(args) -> int:
    from ..atomic import atomic_save_image
    from ..progress import tqdm_progress
    from ..sampling import sample

    bundle, prompts = load_bundle(args), read_prompts(args)
    with tqdm_progress("sample") as on_step:
        images = sample(bundle, prompts, args.seed, lora_path=args.lora, lora_strength=args.lora_strength,
                        on_step=on_step, **sampling_kwargs(args))
    for i, image in enumerate(images):
        path = args.out / f"{i:03d}_seed{args.seed + i}.png"
        atomic_save_image(image, path)
        print(path)
    return 0


def cmd_compare(args) -> int:
    from ..progress import tqdm_progress
    from ..stages import compare

    bundle, prompts = load_bundle(args), read_prompts(args)
    with tqdm_progress("compare") as on_step:
        path = compare(bundle, args.lora, prompts, args.out, seed=args.seed, lora_strength=args.lora_strength,
                       on_step=on_step, **sampling_kwargs(args))
    print(f"grid: {path}")
    return 0


def register(verbs) -> None:
    """The `train`, `sample` and `compare` verbs."""
    train = verbs.add_parser("train", help="train a SCoFT LoRA on a CCUB folder",
                             description="Train a SCoFT LoRA (L_LDM, L_M, L_P, L_C) on a CCUB-format folder.")
    add_model_args(train)
    train.add_argument("--data", type=Path, required=True, help="CCUB folder (metadata.jsonl or images + .txt captions)")
    add_ccub_read_args(train)
    add_run_args(train)
    train.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="data parallel over N processes on this machine (re-launches this command through "
                            "`accelerate launch`; one GPU each with --device cuda, else CPU/gloo). --batch-size is "
                            "the global batch, a multiple of N. Default 1: this process alone")
    train.add_argument("--culture-terms", nargs="+", help="words removed to derive generic captions (blip_text)")
    _add_train_config_args(train)
    train.set_defaults(func=cmd_train)

    sample = verbs.add_parser("sample", help="generate images, optionally with a LoRA")
    add_model_args(sample)
    add_sampling_args(sample)
    sample.add_argument("--lora", type=Path, help="a LoRA .safetensors (kohya format)")
    sample.add_argument("--out", type=Path, required=True, help="output folder for PNGs")
    sample.set_defaults(func=cmd_sample)

    compare = verbs.add_parser("compare", help="baseline vs LoRA grid from the same seeds")
    add_model_args(compare)
    add_sampling_args(compare)
    compare.add_argument("--lora", type=Path, required=True, help="a LoRA .safetensors (kohya format)")
    compare.add_argument("--out", type=Path, required=True, help="grid PNG path")
    compare.set_defaults(func=cmd_compare)
