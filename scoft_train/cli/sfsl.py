"""`sfsl classimages|train|eval`: spurious-feature fine-tuning (scoft_train/sfsl)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..sfsl.config import CLASS_TEMPLATE, SFSLConfig
from .common import add_dataclass_args, add_model_args, add_run_args, dataclass_values, load_bundle, resume_from


def cmd_classimages(args) -> int:
    from ..progress import tqdm_progress
    from ..sfsl.class_images import ensure_class_images

    prompt = args.class_prompt or CLASS_TEMPLATE.format(class_name=args.class_name)
    with tqdm_progress("class images") as on_step:
        paths = ensure_class_images(load_bundle(args), args.out, prompt, count=args.count, seed=args.seed,
                                    steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, size=args.size,
                                    on_step=on_step)
    print(f"{len(paths)} class images of {prompt!r} in {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..progress import tqdm_progress
    from ..sfsl.data import load_image_folder
    from ..sfsl.stages import train_sfsl

    config = SFSLConfig.from_dict(dataclass_values(args, SFSLConfig))
    bundle = load_bundle(args)
    resolution = args.resolution or bundle.resolution
    options = dict(resolution=resolution, center_crop=not args.random_crop, random_flip=args.flip)
    instances = load_image_folder(args.instance_dir, config.instance_prompt, **options)
    classes = load_image_folder(args.class_dir, config.class_prompt, **options) if args.class_dir else None
    with tqdm_progress("sfsl train") as on_step:
        outputs = train_sfsl(bundle, instances, classes, config, args.out, on_step=on_step, resume=resume_from(args),
                             preview_every=args.preview_every)
    print(f"LoRA: {outputs.lora}\nloss history: {outputs.history_json}\nloss plot: {outputs.loss_plot}")
    if args.preview_every:
        print(f"previews: {args.out / 'previews'}")
    return 0


def _classifier_arg(text: str) -> tuple[str, Path]:
    spec, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write SPEC=WEIGHTS, e.g. torchvision:resnet50=robust_r50.safetensors")
    return spec, Path(path)


def cmd_eval(args) -> int:
    from ..sfsl.classifier import load_classifier
    from ..sfsl.evaluate import evaluate_sfsl, load_images

    classifiers = [load_classifier(spec, path, args.classifier_size, args.device) for spec, path in args.classifier]
    report = evaluate_sfsl(load_images(args.images), load_images(args.references), classifiers, args.target_class,
                           quality_weights=args.quality_weights)
    path = report.save(args.out)
    for name, rate in report.spurious_rate.items():
        print(f"spurious rate {name}: {rate:.3f}")
    print(f"similarity: {report.similarity:.4f}")
    print(f"quality: {report.quality:.4f}" if report.quality is not None else report.notes[0])
    print(f"report: {path}")
    return 0


def register(verbs) -> None:
    """The `sfsl` verb with `classimages`, `train` and `eval`."""
    from ..sampling import SCHEDULERS

    sfsl = verbs.add_parser("sfsl", help="spurious-feature fine-tuning: class images, train, eval",
                            description="DreamBooth + prior preservation + spurious feature similarity loss (SFSL).")
    sub = sfsl.add_subparsers(dest="sfsl_verb", required=True, metavar="STEP")

    classimages = sub.add_parser("classimages", help="generate (or complete) the cached class images",
                                 description="Generate the missing class images of a folder with the frozen model.")
    add_model_args(classimages)
    classimages.add_argument("--out", type=Path, required=True, help="class image folder (reused: only missing images are made)")
    what = classimages.add_mutually_exclusive_group(required=True)
    what.add_argument("--class-name", help="class word; prompt 'a photo of <class>'")
    what.add_argument("--class-prompt", help="the full class prompt")
    classimages.add_argument("--count", type=int, default=100, help="number of class images")
    classimages.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    classimages.add_argument("--steps", type=int, default=30, help="denoising steps")
    classimages.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    classimages.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="diffusers sampler")
    classimages.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    classimages.set_defaults(func=cmd_classimages)

    train = sub.add_parser("train", help="train an SFSL LoRA (UNet + text encoder)",
                           description="Train an SFSL LoRA on reference spurious images with prior preservation.")
    add_model_args(train)
    train.add_argument("--instance-dir", type=Path, required=True, help="folder of reference spurious images")
    train.add_argument("--class-dir", type=Path,
                       help="class image folder (from `sfsl classimages`); needed unless --prior-loss-weight 0")
    add_run_args(train)
    add_dataclass_args(train.add_argument_group("SFSL settings (override --config)"), SFSLConfig)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="spurious rate, similarity to the references, quality",
                              description="Score generated images: spurious rate per classifier, class-wise feature "
                                          "similarity to the references, TOPIQ quality when available.")
    evaluate.add_argument("--images", type=Path, required=True, help="folder of generated images")
    evaluate.add_argument("--references", type=Path, required=True, help="folder of reference spurious images")
    evaluate.add_argument("--classifier", type=_classifier_arg, action="append", required=True,
                          help="SPEC=WEIGHTS, e.g. torchvision:resnet50=r50.safetensors "
                               "(repeat; the first gives the similarity features)")
    evaluate.add_argument("--target-class", type=int, required=True, help="the classifiers' index of the target class")
    evaluate.add_argument("--classifier-size", type=int, default=224, help="classifier input side (0: as given)")
    evaluate.add_argument("--quality-weights", type=Path,
                          help="local TOPIQ-NR weights for pyiqa (absent: quality skipped)")
    evaluate.add_argument("--device", default="cpu", help="torch device")
    evaluate.add_argument("--out", type=Path, required=True, help="report JSON path")
    evaluate.set_defaults(func=cmd_eval)
