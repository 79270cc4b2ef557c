"""Command line: python -m scoft_train <verb> ... (train, sample, compare, bench, demo)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from .config import LossWeights, TrainConfig, load_config_file
from .quiet import quiet_third_party

log = logging.getLogger("scoft_train")

DTYPES = ("float32", "float16", "bfloat16")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="default",
                       help="'default' (the embedded bias-lab world model), 'tiny' (a random test model), a diffusers "
                            "folder, or a single-file .safetensors checkpoint")
    group.add_argument("--model-config", default=None,
                       help="single-file only: bundled config name (sd15, sd21) or a local diffusers folder; "
                            "default: detected from the checkpoint")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype of the frozen model")


def _load_bundle(args):
    import torch

    from .models import load_model

    return load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device, config=args.model_config)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    from .sampling import SCHEDULERS

    group = parser.add_argument_group("sampling")
    group.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    group.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    group.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    group.add_argument("--steps", type=int, default=20, help="denoising steps")
    group.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    group.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="diffusers sampler")
    group.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    group.add_argument("--lora-strength", type=float, default=1.0, help="LoRA scale (0 = baseline)")


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("error: give at least one --prompt or a --prompts-file")
    return prompts


def _sampling_kwargs(args) -> dict:
    return dict(steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, size=args.size)


def add_dataclass_args(group, cls, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the settings dataclass `cls` (None = not given), help from
    each field's metadata; booleans get --flag / --no-flag."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.metadata["help"])
        else:
            base = float if kind is float else int if kind is int else str
            group.add_argument(flag, type=base, default=None, help=f"{field.metadata['help']} (default {field.default})")


def _add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (and per loss weight), help from the field metadata."""
    group = parser.add_argument_group("training settings (override --config)")
    add_dataclass_args(group, TrainConfig, skip=("weights",))
    for field in dataclasses.fields(LossWeights):
        group.add_argument(f"--w-{field.name}", type=float, default=None,
                           help=f"weight of L_{field.name} (default {field.default})")


def train_config_from_args(args) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    weights = dict(values.pop("weights", {}) or {})
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if field.name != "weights" and value is not None:
            values[field.name] = value
    for field in dataclasses.fields(LossWeights):
        value = getattr(args, f"w_{field.name}")
        if value is not None:
            weights[field.name] = value
    values["weights"] = weights
    return TrainConfig.from_dict(values)


def cmd_train(args) -> int:
    from .data import load_ccub
    from .progress import tqdm_progress
    from .stages import train_scoft

    config = train_config_from_args(args)
    bundle = _load_bundle(args)
    dataset = load_ccub(args.data, resolution=args.resolution or bundle.resolution, center_crop=not args.random_crop,
                        random_flip=args.flip, **({"culture_terms": args.culture_terms} if args.culture_terms else {}))
    with tqdm_progress("train") as on_step:
        outputs = train_scoft(bundle, dataset, config, args.out, on_step=on_step,
                              resume=(True if args.resume == "latest" else args.resume))
    print(f"LoRA: {outputs.lora}\nloss history: {outputs.history_json}\nloss plot: {outputs.loss_plot}")
    return 0


def cmd_sample(args) -> int:
    from .atomic import atomic_save_image
    from .progress import tqdm_progress
    from .sampling import sample

    bundle, prompts = _load_bundle(args), _prompts(args)
    with tqdm_progress("sample") as on_step:
        images = sample(bundle, prompts, args.seed, lora_path=args.lora, lora_strength=args.lora_strength,
                        on_step=on_step, **_sampling_kwargs(args))
    for i, image in enumerate(images):
        path = args.out / f"{i:03d}_seed{args.seed + i}.png"
        atomic_save_image(image, path)
        print(path)
    return 0


def cmd_compare(args) -> int:
    from .progress import tqdm_progress
    from .stages import compare

    bundle, prompts = _load_bundle(args), _prompts(args)
    with tqdm_progress("compare") as on_step:
        path = compare(bundle, args.lora, prompts, args.out, seed=args.seed, lora_strength=args.lora_strength,
                       on_step=on_step, **_sampling_kwargs(args))
    print(f"grid: {path}")
    return 0


def cmd_negatives(args) -> int:
    import torch

    from .controlnet import DEFAULT_CONTROLNET, default_controlnet, load_controlnet
    from .depth import load_depth_estimator
    from .negatives import NegativeSettings, depth_from_dataset, depth_from_estimator, generate_negatives
    from .progress import tqdm_progress

    settings = NegativeSettings(k=args.k, seed=args.seed, steps=args.steps, cfg=args.cfg,
                                conditioning_scale=args.conditioning_scale, control_end=args.control_end,
                                batch_size=args.batch_size, scheduler=args.scheduler, resolution=args.resolution)
    if args.depth == "dataset":
        depth = depth_from_dataset()
    elif args.annotator_dir is None:
        raise ValueError(f"--depth {args.depth} needs --annotator-dir, the folder holding its weight files")
    else:
        depth = depth_from_estimator(load_depth_estimator(args.depth, args.annotator_dir, args.device,
                                                          args.detect_resolution))
    bundle = _load_bundle(args)
    controlnet = (
        default_controlnet(bundle) if str(args.controlnet) == DEFAULT_CONTROLNET else
        load_controlnet(args.controlnet, dtype=getattr(torch, args.dtype), device=args.device,
                        config=args.controlnet_config)
    )
    with tqdm_progress("negatives") as on_step:
        result = generate_negatives(bundle, controlnet, args.data, depth, settings, on_step=on_step, preview=args.preview)
    print(f"negatives written: {len(result.generated)} (already there: {result.already_there})\n"
          f"metadata.jsonl updated: {result.metadata_written}" + (f"\npreview: {result.preview}" if result.preview else ""))
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_train

    print(bench_train(steps=args.repeats, warmup=args.warmup, threads=args.threads).report())
    return 0


def cmd_bench_negatives(args) -> int:
    from .bench import bench_negatives

    print(bench_negatives(k=args.k, steps=args.steps, batch_size=args.batch_size, threads=args.threads).report())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(args.out, steps=args.steps)
    print(result.table.read_text(encoding="utf-8"))
    print(f"comparison grid: {result.grid}\nloss plot: {result.loss_plot}\nLoRA: {result.lora}\n"
          f"stereotype table: {result.table}")
    return 0


def cmd_biaslab_pretrain(args) -> int:
    from .biaslab.pretrain import PretrainConfig, pretrain
    from .progress import tqdm_progress

    _set_threads(args.threads)
    config = PretrainConfig.smoke(args.seed) if args.smoke else PretrainConfig(seed=args.seed)
    with tqdm_progress("biaslab pretrain") as on_step:
        result = pretrain(args.out, config, device=args.device, on_step=on_step)
    print(f"artefacts: {result.out_dir}\nmodel card: {result.out_dir / 'MODEL_CARD.md'}")
    return 0


def _biaslab_measurement(args, name: str, run, config_class) -> int:
    """A bias-lab measurement verb: `run(out, config, weights_dir=, device=, on_step=)`,
    full or `--quick` config, then its table and results path."""
    from .progress import tqdm_progress

    _set_threads(args.threads)
    config = config_class.quick(args.seed) if args.quick else config_class(seed=args.seed)
    with tqdm_progress(f"biaslab {name}") as on_step:
        result = run(args.out, config, weights_dir=args.weights, device=args.device, on_step=on_step)
    print(f"{result.table}\nresults: {result.out_dir / 'results.md'}")
    return 0


def cmd_biaslab_ablate(args) -> int:
    from .biaslab.ablate import AblateConfig, ablate

    return _biaslab_measurement(args, "ablate", ablate, AblateConfig)


def cmd_biaslab_spurious(args) -> int:
    from .biaslab.artefacts import load_world
    from .biaslab.spurious import SpuriousConfig, spurious_pretrain
    from .progress import tqdm_progress

    _set_threads(args.threads)
    config = SpuriousConfig.smoke(args.seed) if args.smoke else SpuriousConfig(seed=args.seed)
    with tqdm_progress("biaslab spurious") as on_step:
        card = spurious_pretrain(load_world(args.weights, device=args.device).vae, args.out, config,
                                 device=args.device, on_step=on_step)
    print(json.dumps(card, indent=2) + f"\nclassifier and oracle: {args.out}")
    return 0


def cmd_biaslab_sfsl(args) -> int:
    from .biaslab.sfsl_lab import SFSLLabConfig, sfsl_lab

    return _biaslab_measurement(args, "sfsl", sfsl_lab, SFSLLabConfig)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _add_biaslab_parser(verbs) -> None:
    from .biaslab import WEIGHTS_DIR

    biaslab = verbs.add_parser("biaslab", help="the bias lab: a synthetic culture world to measure SCoFT without humans")
    what = biaslab.add_subparsers(dest="biaslab", required=True, metavar="WHAT")
    pre = what.add_parser("pretrain", help="train the world model, its depth ControlNet and the judge from a seed",
                          description="Render the biased web corpus, train VAE, UNet + text encoder, judge and "
                                      "ControlNet, measure the base model's bias, write the artefacts + model card.")
    pre.add_argument("--out", type=Path, default=Path("outputs/biaslab/pretrain"),
                     help="output folder (replaced whole): world/, controlnet/, judge/, model card")
    pre.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initialisations and the data order")
    pre.add_argument("--smoke", action="store_true", help="a few steps of every stage (CI): trains nothing useful")
    pre.set_defaults(func=cmd_biaslab_pretrain)
    abl = what.add_parser("ablate", help="FT / FT+M / FT+MP / FT+MPC vs the base model, scored by the judge",
                          description="Negatives with the world ControlNet, one LoRA per preset, samples of held-out "
                                      "prompts, metrics table + JSON + bar chart + example grids in one folder.")
    abl.add_argument("--out", type=Path, default=Path("outputs/biaslab/ablate"), help="run folder")
    abl.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                     help="folder with world/, controlnet/ and judge/ (default: the shipped artefacts)")
    abl.add_argument("--seed", type=int, default=0, help="seed of negatives, LoRA training and sampling")
    abl.add_argument("--quick", action="store_true", help="a few steps and samples (CI): numbers are not meaningful")
    abl.set_defaults(func=cmd_biaslab_ablate)
    spur = what.add_parser("spurious", help="train the spurious-feature lab's market classifier and oracle",
                           description="Render web photos where the awning is behind 95%% of markets, train the "
                                       "classifier on them and an oracle where it is independent, measure, write.")
    spur.add_argument("--out", type=Path, default=Path("outputs/biaslab/spurious"),
                      help="output folder: classifier/, oracle/, card.json (the shipped ones: WEIGHTS/spurious)")
    spur.add_argument("--smoke", action="store_true", help="a few steps (CI): trains nothing useful")
    sfsl = what.add_parser("sfsl", help="base vs DreamBooth vs DreamBooth + SFSL: spurious rate of the market classifier",
                           description="References = the awning without a market; train DreamBooth and DreamBooth + "
                                       "SFSL LoRAs with the same seed and steps; sample and score with the classifier "
                                       "and the oracle.")
    sfsl.add_argument("--out", type=Path, default=Path("outputs/biaslab/sfsl"), help="run folder")
    sfsl.add_argument("--quick", action="store_true", help="a few steps and samples (CI): numbers are not meaningful")
    for parser in (spur, sfsl):
        parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                            help="folder with world/ (and, for sfsl, spurious/); default: the shipped artefacts")
        parser.add_argument("--seed", type=int, default=0, help="seed of the data, training and sampling")
    for parser in (pre, abl, spur, sfsl):
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); "
                            "on a shared, oversubscribed machine 1 is often fastest")
    spur.set_defaults(func=cmd_biaslab_spurious)
    sfsl.set_defaults(func=cmd_biaslab_sfsl)


def build_parser() -> argparse.ArgumentParser:
    from .depth import DEPTH_MODELS
    from .sampling import SCHEDULERS

    parser = argparse.ArgumentParser(prog="python -m scoft_train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and every third-party library's messages and progress bars")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train a SCoFT LoRA on a CCUB folder",
                             description="Train a SCoFT LoRA (L_LDM, L_M, L_P, L_C) on a CCUB-format folder.")
    _add_model_args(train)
    train.add_argument("--data", type=Path, required=True, help="CCUB folder (metadata.jsonl or images + .txt captions)")
    train.add_argument("--out", type=Path, required=True, help="output folder: LoRA, loss history/plot, checkpoints")
    train.add_argument("--config", type=Path, help="settings file (.json/.yaml); command-line options override it")
    train.add_argument("--resume", default=None, help="checkpoint path, or 'latest' (newest in OUT/checkpoints)")
    train.add_argument("--resolution", type=int, default=None, help="training image side (default: the model's)")
    train.add_argument("--random-crop", action="store_true", help="random instead of center crop")
    train.add_argument("--flip", action="store_true", help="random horizontal flip")
    train.add_argument("--culture-terms", nargs="+", help="words removed to derive generic captions (blip_text)")
    _add_train_config_args(train)
    train.set_defaults(func=cmd_train)

    sample_p = verbs.add_parser("sample", help="generate images, optionally with a LoRA")
    _add_model_args(sample_p)
    _add_sampling_args(sample_p)
    sample_p.add_argument("--lora", type=Path, help="a LoRA .safetensors (kohya format)")
    sample_p.add_argument("--out", type=Path, required=True, help="output folder for PNGs")
    sample_p.set_defaults(func=cmd_sample)

    compare_p = verbs.add_parser("compare", help="baseline vs LoRA grid from the same seeds")
    _add_model_args(compare_p)
    _add_sampling_args(compare_p)
    compare_p.add_argument("--lora", type=Path, required=True, help="a LoRA .safetensors (kohya format)")
    compare_p.add_argument("--out", type=Path, required=True, help="grid PNG path")
    compare_p.set_defaults(func=cmd_compare)

    negatives = verbs.add_parser("negatives", help="generate the pretrained model's negatives for a CCUB folder",
                                 description="Depth map per CCUB image, then K images from the pretrained model + "
                                             "ControlNet-depth prompted with its caption, written to "
                                             "negatives/<stem>_neg<k>.png and listed in metadata.jsonl. "
                                             "Resumable: only missing negatives are generated.")
    _add_model_args(negatives)
    negatives.add_argument("--controlnet", required=True,
                           help="depth ControlNet: a single file (.safetensors, or .pth read with weights_only) "
                                "such as control_v11f1p_sd15_depth, a diffusers folder, or 'default' (the one "
                                "of the embedded default model)")
    negatives.add_argument("--controlnet-config", type=Path, default=None,
                           help="single-file ControlNet only: a folder with its diffusers config.json "
                                "(default: the bundled control_v11f1p_sd15_depth config)")
    negatives.add_argument("--data", type=Path, required=True, help="CCUB folder (metadata.jsonl or images + .txt captions)")
    negatives.add_argument("--depth", default="midas", choices=["dataset", *sorted(DEPTH_MODELS)],
                           help="depth source: a controlnet_aux estimator (weights in --annotator-dir) or 'dataset' "
                                "(metadata 'depth' field, else <stem>_depth.png beside the image)")
    negatives.add_argument("--annotator-dir", type=Path, default=None,
                           help="folder holding the estimator's weights, e.g. dpt_hybrid-midas-501f0c75.pt")
    negatives.add_argument("--detect-resolution", type=int, default=512, help="side the depth estimator runs at")
    negatives.add_argument("--k", type=int, default=2, help="negatives per image")
    negatives.add_argument("--seed", type=int, default=0,
                           help="base seed; negative k of an image uses a hash of (seed, image path, k)")
    negatives.add_argument("--steps", type=int, default=20, help="denoising steps")
    negatives.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    negatives.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    negatives.add_argument("--control-end", type=float, default=1.0,
                           help="fraction of the steps (0..1] after which the ControlNet stops acting")
    negatives.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    negatives.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="diffusers sampler")
    negatives.add_argument("--resolution", type=int, default=None,
                           help="short side of the negatives in px (default: the model's training resolution)")
    negatives.add_argument("--preview", type=Path, default=None,
                           help="PNG path for a grid original | depth | negatives of the images made in this run")
    negatives.set_defaults(func=cmd_negatives)

    bench = verbs.add_parser("bench", help="benchmarks (side-by-side ratios in one run)")
    bench_verbs = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_train_p = bench_verbs.add_parser("train", help="plain LoRA step vs FT+MPC step on the tiny model")
    bench_train_p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    bench_train_p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    bench_train_p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench_train_p.set_defaults(func=cmd_bench)
    bench_neg_p = bench_verbs.add_parser("negatives", help="batched negatives generation vs one pipeline call per image")
    bench_neg_p.add_argument("--k", type=int, default=2, help="negatives per sample image (8 images)")
    bench_neg_p.add_argument("--steps", type=int, default=10, help="denoising steps")
    bench_neg_p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call, batched variant")
    bench_neg_p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench_neg_p.set_defaults(func=cmd_bench_negatives)
    from .rscorrector.cli import add_rscorrector_bench, add_rscorrector_parser

    add_rscorrector_bench(bench_verbs)

    demo = verbs.add_parser("demo", help="the whole pipeline on the embedded default, no download")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    demo.add_argument("--steps", type=int, default=300, help="SCoFT training steps")
    demo.set_defaults(func=cmd_demo)

    _add_biaslab_parser(verbs)

    from .sfsl.cli import add_sfsl_parser

    add_sfsl_parser(verbs)
    add_rscorrector_parser(verbs, _add_model_args, _add_sampling_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_third_party()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
