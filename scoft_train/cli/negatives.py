"""`negatives`: the pretrained model's negatives for a CCUB folder (depth + ControlNet)."""

from __future__ import annotations

from pathlib import Path

from .common import add_ccub_read_args, add_model_args, ccub_read_options, load_bundle


def cmd_negatives(args) -> int:
    import torch

    from ..controlnet import DEFAULT_CONTROLNET, default_controlnet, load_controlnet
    from ..data import load_ccub
    from ..depth import load_depth_estimator
    from ..negatives import NegativeSettings, depth_from_dataset, depth_from_estimator, generate_negatives
    from ..progress import tqdm_progress

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
    bundle = load_bundle(args)
    controlnet = (
        default_controlnet(bundle) if str(args.controlnet) == DEFAULT_CONTROLNET else
        load_controlnet(args.controlnet, dtype=getattr(torch, args.dtype), device=args.device,
                        config=args.controlnet_config)
    )
    dataset = load_ccub(args.data, missing_negatives_ok=True, **ccub_read_options(args))
    with tqdm_progress("negatives") as on_step:
        result = generate_negatives(bundle, controlnet, dataset, depth, settings, on_step=on_step, preview=args.preview)
    print(f"negatives written: {len(result.generated)} (already there: {result.already_there})\n"
          f"metadata.jsonl updated: {result.metadata_written}" + (f"\npreview: {result.preview}" if result.preview else ""))
    return 0


def register(verbs) -> None:
    """The `negatives` verb."""
    from ..depth import DEPTH_MODELS
    from ..sampling import SCHEDULERS

    negatives = verbs.add_parser("negatives", help="generate the pretrained model's negatives for a CCUB folder",
                                 description="Depth map per CCUB image, then K images from the pretrained model + "
                                             "ControlNet-depth prompted with its caption, written to "
                                             "negatives/<stem>_neg<k>.png and listed in metadata.jsonl. "
                                             "Resumable: only missing negatives are generated.")
    add_model_args(negatives)
    negatives.add_argument("--controlnet", required=True,
                           help="depth ControlNet: a single file (.safetensors, or .pth read with weights_only) "
                                "such as control_v11f1p_sd15_depth, a diffusers folder, or 'default' (the one "
                                "of the embedded default model)")
    negatives.add_argument("--controlnet-config", type=Path, default=None,
                           help="single-file ControlNet only: a folder with its diffusers config.json "
                                "(default: the bundled control_v11f1p_sd15_depth config)")
    negatives.add_argument("--data", type=Path, required=True, help="CCUB folder (metadata.jsonl or images + .txt captions)")
    add_ccub_read_args(negatives)
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
