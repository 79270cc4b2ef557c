"""`biaslab pretrain|scorers|ablate|branch|memorization|spurious|sfsl`: the bias lab's commands (scoft_train/biaslab)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
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


def _measurement(args, name: str, run, config) -> int:
    """A bias-lab measurement verb over training seeds: `config` (full or --quick) with --seeds
    applied, `run(out, config, weights_dir=, device=, on_step=)`, then its table and results path."""
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    if args.seeds:
        config = dataclasses.replace(config, seeds=tuple(args.seeds))
    with tqdm_progress(f"biaslab {name}") as on_step:
        result = run(args.out, config, weights_dir=args.weights, device=args.device, on_step=on_step)
    print(f"{result.table}\nresults: {result.out_dir / 'results.md'}")
    return 0


def cmd_ablate(args) -> int:
    from ..biaslab.ablate import AblateConfig, ablate

    return _measurement(args, "ablate", ablate, AblateConfig.quick() if args.quick else AblateConfig())


def cmd_branch(args) -> int:
    from ..biaslab.ablate import AblateConfig, ablate

    config = AblateConfig.branch(quick=args.quick)
    if args.rows:
        config = dataclasses.replace(config, rows=tuple(args.rows))
    return _measurement(args, "branch", functools.partial(ablate, run_dir=args.run), config)


def cmd_memorization(args) -> int:
    from ..biaslab.memorization import MemorizationConfig, memorization_stress

    return _measurement(args, "memorization", memorization_stress,
                        MemorizationConfig.quick() if args.quick else MemorizationConfig())


def cmd_scorers(args) -> int:
    from ..biaslab.scorers import ScorersConfig, train_scorers
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    config = ScorersConfig.smoke() if args.smoke else ScorersConfig()
    with tqdm_progress("biaslab scorers") as on_step:
        card = train_scorers(args.out, config, weights_dir=args.weights, on_step=on_step)
    print(json.dumps(card, indent=2) + f"\nsecond judge, rules and label-free encoder: {args.out}")
    return 0


def cmd_spurious(args) -> int:
    from ..biaslab.artefacts import load_world
    from ..biaslab.spurious import (
        SecondClassifierConfig,
        SpuriousConfig,
        second_classifier_pretrain,
        spurious_pretrain,
    )
    from ..progress import tqdm_progress

    _set_threads(args.threads)
    second = SecondClassifierConfig.smoke() if args.smoke else SecondClassifierConfig()
    vae = load_world(args.weights, device=args.device).vae
    with tqdm_progress("biaslab spurious") as on_step:
        if args.second_only:
            card = second_classifier_pretrain(vae, args.out, second, device=args.device, on_step=on_step)
        else:
            config = SpuriousConfig.smoke(args.seed) if args.smoke else SpuriousConfig(seed=args.seed)
            card = spurious_pretrain(vae, args.out, config, device=args.device, on_step=on_step, second=second)
    print(json.dumps(card, indent=2) + f"\nclassifiers and oracle: {args.out}")
    return 0


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, e.g. 0,1,2: {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs at least one seed and no repeats: {text!r}")
    return seeds


def cmd_sfsl(args) -> int:
    from ..biaslab.sfsl_lab import SFSLLabConfig, sfsl_lab

    return _measurement(args, "sfsl", sfsl_lab, SFSLLabConfig.quick() if args.quick else SFSLLabConfig())


def _seeded(parser, what: str, default: str) -> None:
    """--seeds and --quick of a measurement verb (see _measurement)."""
    parser.add_argument("--seeds", type=_seed_list, default=None,
                        help=f"{what}, comma-separated (default {default}; --quick: 0,1)")
    parser.add_argument("--quick", action="store_true", help="a few steps and samples (CI): numbers are not meaningful")


def register(verbs) -> None:
    """The `biaslab` verb with `pretrain`, `scorers`, `ablate`, `memorization`, `spurious` and `sfsl`."""
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
    abl = what.add_parser("ablate", help="FT / FT+M / FT+MP / FT+MPC / RS-Corrector vs the base model over training "
                                         "seeds, scored by scorers no loss loads",
                          description="Negatives with the world ControlNet; per training seed one LoRA per row; "
                                      "samples of the seen, unseen-wording and held-out-cell prompts; rates with "
                                      "bootstrap intervals, paired differences, results.json (with provenance) and "
                                      "results.md rendered from it. Finished (row, seed) units in OUT are reused.")
    abl.add_argument("--out", type=Path, default=Path("outputs/biaslab/ablate"), help="run folder")
    abl.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                     help="folder with world/, controlnet/, judge/, second_judge/, rules.json and ssl/ "
                          "(default: the shipped artefacts)")
    _seeded(abl, "LoRA training seeds", "0,1,2,3,4")
    abl.set_defaults(func=cmd_ablate)
    branch = what.add_parser("branch", help="cost and effect of cheaper decoded branches: FT, FT+MPC and FT+MPC with "
                                             "fewer denoising steps or a rarer branch, over training seeds",
                             description="The ablation's negatives, budgets, prompts and independent scorers for FT, "
                                         "FT+MPC and the cheaper branch rows; training seconds side by side, rates "
                                         "with intervals and paired differences, results.json + results.md in OUT. "
                                         "The negatives, LoRAs and finished (row, seed) units live in RUN, shared "
                                         "with `biaslab ablate --out RUN`: what either made is reused.")
    branch.add_argument("--out", type=Path, default=Path("outputs/biaslab/branch"), help="results folder")
    branch.add_argument("--run", type=Path, default=None,
                        help="run folder of a `biaslab ablate` with the same budgets (e.g. outputs/biaslab/ablate) "
                             "whose units to reuse and extend (default: OUT)")
    branch.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="folder with the lab's artefacts "
                                                                          "(default: the shipped ones)")
    branch.add_argument("--row", dest="rows", action="append", default=None,
                        help="a row to train (repeat for several; default: FT, FT+MPC and every cheaper branch, "
                             "as named in results.md), e.g. --row FT --row 'FT+MPC, S=4' to replicate one setting "
                             "on new seeds")
    _seeded(branch, "LoRA training seeds", "0,1,2")
    branch.set_defaults(func=cmd_branch)
    mem = what.add_parser("memorization", help="FT vs FT+M where memorization can move: few CCUB images, many steps",
                          description="A small CCUB copy, FT and FT+M LoRAs per training seed, every training caption "
                                      "sampled; the share of samples that copy a training image, with intervals.")
    mem.add_argument("--out", type=Path, default=Path("outputs/biaslab/memorization"), help="run folder")
    mem.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="folder with world/ (default: shipped)")
    _seeded(mem, "LoRA training seeds", "0,1,2,3,4")
    mem.set_defaults(func=cmd_memorization)
    sco = what.add_parser("scorers", help="train the second judge and the label-free encoder, calibrate the rules",
                          description="The ablation's independent scorers (second judge, rule-based scorer) and the "
                                      "label-free feature space of its L_P / L_C rows, from their own seeds and data.")
    sco.add_argument("--out", type=Path, default=WEIGHTS_DIR,
                     help="output folder: second_judge/, rules.json, ssl/, scorers_card.json (default: the shipped "
                          "artefacts' folder)")
    sco.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="folder with world/ (its VAE round-trips)")
    sco.add_argument("--smoke", action="store_true", help="a few steps (CI): trains nothing useful")
    sco.set_defaults(func=cmd_scorers)
    spur = what.add_parser("spurious", help="train the spurious-feature lab's two market classifiers and oracle",
                           description="Render web photos where the awning is behind 95%% of markets, train "
                                       "classifier 1 and (own seed, data draw and width) classifier 2 on them and an "
                                       "oracle where it is independent, measure, write.")
    spur.add_argument("--out", type=Path, default=Path("outputs/biaslab/spurious"),
                      help="output folder: classifier/, classifier_2/, oracle/, card.json (the shipped ones: "
                           "WEIGHTS/spurious)")
    spur.add_argument("--smoke", action="store_true", help="a few steps (CI): trains nothing useful")
    spur.add_argument("--second-only", action="store_true",
                      help="only (re)train the second classifier into OUT, which already holds card.json")
    spur.set_defaults(func=cmd_spurious)
    sfsl = what.add_parser("sfsl", help="base vs DreamBooth vs DreamBooth + SFSL over training seeds: spurious rate "
                                        "by two market classifiers",
                           description="References = the awning without a market; per training seed, train DreamBooth "
                                       "and DreamBooth + SFSL LoRAs with the same steps and data; sample with the same "
                                       "seeds and read with classifier 1 (trained against), classifier 2 "
                                       "(independent) and the oracle; per-seed rows, bootstrap intervals and the "
                                       "paired difference. Finished seeds in OUT are reused.")
    sfsl.add_argument("--out", type=Path, default=Path("outputs/biaslab/sfsl"), help="run folder")
    _seeded(sfsl, "training seeds", "0,1,2,3,4")
    sfsl.set_defaults(func=cmd_sfsl)
    spur.add_argument("--seed", type=int, default=0, help="seed of the data, training and sampling")
    for parser in (spur, sfsl):
        parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                            help="folder with world/ (and, for sfsl, spurious/); default: the shipped artefacts")
    for parser in (pre, abl, branch, mem, sco, spur, sfsl):
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); "
                            "on a shared, oversubscribed machine 1 is often fastest")
