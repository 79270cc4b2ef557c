"""`biaslab pretrain|ablate|spurious|sfsl`: the bias lab's commands (scoft_train/biaslab)."""

from __future__ import annotations

import json
from pathlib import Path

from ..assets import WEIGHTS_DIR


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def cmd_pretrain(args) -> int:
    from ..biaslab.pretrain import PretrainConfig, pretrain
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    config = PretrainConfig.smoke(args.seed) if args.smoke else PretrainConfig(seed=args.seed)
    with tqdm_progress("biaslab pretrain") as on_step:
        result = pretrain(args.out, config, device=args.device, on_step=on_step)
    print(f"artefacts: {result.out_dir}\nmodel card: {result.out_dir / 'MODEL_CARD.md'}")
    return 0


def _measurement(args, name: str, run, config_class) -> int:
    """A bias-lab measurement verb: `run(out, config, weights_dir=, device=, on_step=)`,
    full or `--quick` config, then its table and results path."""
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    config = config_class.quick(args.seed) if args.quick else config_class(seed=args.seed)
    with tqdm_progress(f"biaslab {name}") as on_step:
        result = run(args.out, config, weights_dir=args.weights, device=args.device, on_step=on_step)
    print(f"{result.table}\nresults: {result.out_dir / 'results.md'}")
    return 0


def cmd_ablate(args) -> int:
    from ..biaslab.ablate import AblateConfig, ablate

    return _measurement(args, "ablate", ablate, AblateConfig)


def cmd_spurious(args) -> int:
    from ..biaslab.artefacts import load_world
    from ..biaslab.spurious import SpuriousConfig, spurious_pretrain
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    config = SpuriousConfig.smoke(args.seed) if args.smoke else SpuriousConfig(seed=args.seed)
    with tqdm_progress("biaslab spurious") as on_step:
        card = spurious_pretrain(load_world(args.weights, device=args.device).vae, args.out, config,
                                 device=args.device, on_step=on_step)
    print(json.dumps(card, indent=2) + f"\nclassifier and oracle: {args.out}")
    return 0


def cmd_sfsl(args) -> int:
    from ..biaslab.sfsl_lab import SFSLLabConfig, sfsl_lab

    return _measurement(args, "sfsl", sfsl_lab, SFSLLabConfig)


def register(verbs) -> None:
    """The `biaslab` verb with `pretrain`, `ablate`, `spurious` and `sfsl`."""
    biaslab = verbs.add_parser("biaslab", help="the bias lab: a synthetic culture world to measure SCoFT without humans")
    what = biaslab.add_subparsers(dest="biaslab", required=True, metavar="WHAT")
    pre = what.add_parser("pretrain", help="train the world model, its depth ControlNet and the judge from a seed",
                          description="Render the biased web corpus, train VAE, UNet + text encoder, judge and "
                                      "ControlNet, measure the base model's bias, write the artefacts + model card.")
    pre.add_argument("--out", type=Path, default=Path("outputs/biaslab/pretrain"),
                     help="output folder (replaced whole): world/, controlnet/, judge/, model card")
    pre.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initialisations and the data order")
    pre.add_argument("--smoke", action="store_true", help="a few steps of every stage (CI): trains nothing useful")
    pre.set_defaults(func=cmd_pretrain)
    abl = what.add_parser("ablate", help="FT / FT+M / FT+MP / FT+MPC vs the base model, scored by the judge",
                          description="Negatives with the world ControlNet, one LoRA per preset, samples of held-out "
                                      "prompts, metrics table + JSON + bar chart + example grids in one folder.")
    abl.add_argument("--out", type=Path, default=Path("outputs/biaslab/ablate"), help="run folder")
    abl.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                     help="folder with world/, controlnet/ and judge/ (default: the shipped artefacts)")
    abl.add_argument("--seed", type=int, default=0, help="seed of negatives, LoRA training and sampling")
    abl.add_argument("--quick", action="store_true", help="a few steps and samples (CI): numbers are not meaningful")
    abl.set_defaults(func=cmd_ablate)
    spur = what.add_parser("spurious", help="train the spurious-feature lab's market classifier and oracle",
                           description="Render web photos where the awning is behind 95%% of markets, train the "
                                       "classifier on them and an oracle where it is independent, measure, write.")
    spur.add_argument("--out", type=Path, default=Path("outputs/biaslab/spurious"),
                      help="output folder: classifier/, oracle/, card.json (the shipped ones: WEIGHTS/spurious)")
    spur.add_argument("--smoke", action="store_true", help="a few steps (CI): trains nothing useful")
    spur.set_defaults(func=cmd_spurious)
    sfsl = what.add_parser("sfsl", help="base vs DreamBooth vs DreamBooth + SFSL: spurious rate of the market classifier",
                           description="References = the awning without a market; train DreamBooth and DreamBooth + "
                                       "SFSL LoRAs with the same seed and steps; sample and score with the classifier "
                                       "and the oracle.")
    sfsl.add_argument("--out", type=Path, default=Path("outputs/biaslab/sfsl"), help="run folder")
    sfsl.add_argument("--quick", action="store_true", help="a few steps and samples (CI): numbers are not meaningful")
    sfsl.set_defaults(func=cmd_sfsl)
    for parser in (spur, sfsl):
        parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                            help="folder with world/ (and, for sfsl, spurious/); default: the shipped artefacts")
        parser.add_argument("--seed", type=int, default=0, help="seed of the data, training and sampling")
    for parser in (pre, abl, spur, sfsl):
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); "
                            "on a shared, oversubscribed machine 1 is often fastest")
