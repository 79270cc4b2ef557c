"""`rscorrector fit|sample`: fit RS-Corrector's latent prior, sample with correction
(scoft_train/rscorrector)."""

from __future__ import annotations

from pathlib import Path

from .common import add_model_args, add_sampling_args, load_bundle, read_prompts, sampling_kwargs


def cmd_fit(args) -> int:
    from ..progress import tqdm_progress
    from ..rscorrector.prior import fit_prior

    bundle = load_bundle(args)
    with tqdm_progress("rscorrector fit") as on_step:
        prior = fit_prior(bundle, args.fair, args.stereo, steps=args.steps, draws=args.draws, seed=args.seed,
                          max_timestep=args.max_timestep, on_step=on_step)
    prior.save(args.out)
    print(f"prior: {args.out}\nheld-out balanced accuracy: {prior.info['heldout_accuracy']} "
          f"(by timestep: {prior.info['heldout_accuracy_by_timestep']})")
    return 0


def cmd_sample(args) -> int:
    from ..atomic import atomic_save_image
    from ..grid import compare_grid, save_grid
    from ..progress import tqdm_progress
    from ..rscorrector.prior import load_prior
    from ..rscorrector.sampler import sample_corrected
    from ..sampling import sample_tensor, to_pil

    bundle, prompts = load_bundle(args), read_prompts(args)
    prior = load_prior(args.prior, bundle, force=args.force)
    sampling = sampling_kwargs(args)
    with tqdm_progress("rscorrector sample") as on_step:
        corrected = sample_corrected(bundle, prior, prompts, args.seed, last_k=args.k, m_steps=args.m, eta=args.eta,
                                     w_prior=args.w_prior, w_direct=args.w_direct, n_refs=args.n_refs,
                                     on_step=on_step, **sampling)
    images = to_pil(corrected.images)
    for i, image in enumerate(images):
        path = args.out / f"{i:03d}_seed{args.seed + i}.png"
        atomic_save_image(image, path)
        print(path)
    if args.compare is not None:
        with tqdm_progress("baseline") as on_step:
            baseline = to_pil(sample_tensor(bundle, prompts, args.seed, on_step=on_step, **sampling))
        grid = save_grid(compare_grid({"baseline": baseline, "RS-Corrector": images}, prompts), args.compare)
        print(f"grid: {grid}")
    return 0


def register(verbs) -> None:
    """The `rscorrector` verb with `fit` and `sample`."""
    parser = verbs.add_parser("rscorrector", help="RS-Corrector: fit a latent prior, sample with correction")
    actions = parser.add_subparsers(dest="rscorrector", required=True, metavar="ACTION")

    fit = actions.add_parser("fit", help="fit the latent prior on fair vs stereotypical images")
    add_model_args(fit)
    fit.add_argument("--fair", type=Path, required=True, help="fair images: a CCUB folder or a folder of images")
    fit.add_argument("--stereo", type=Path, required=True,
                     help="stereotypical images: a folder (e.g. the model's own generations, or CCUB negatives/)")
    fit.add_argument("--out", type=Path, required=True, help="prior .safetensors to write")
    fit.add_argument("--steps", type=int, default=500, help="head optimizer steps")
    fit.add_argument("--draws", type=int, default=32, help="noisy versions of each image (encoded once)")
    fit.add_argument("--max-timestep", type=int, default=None,
                     help="noisiest DDPM timestep drawn (default: every level, 0..T-1)")
    fit.add_argument("--seed", type=int, default=0, help="split, noise and initialisation seed")
    fit.set_defaults(func=cmd_fit)

    sample = actions.add_parser("sample", help="sample with RS-Corrector, optionally a baseline-vs-corrected grid")
    add_model_args(sample)
    add_sampling_args(sample)
    sample.add_argument("--prior", type=Path, required=True, help="prior .safetensors from `rscorrector fit`")
    sample.add_argument("--force", action="store_true", help="use a prior fitted on another model fingerprint")
    sample.add_argument("--k", type=int, default=4, help="corrected steps at the end (0 = plain sampling)")
    sample.add_argument("--m", type=int, default=2, help="gradient steps per corrected step")
    sample.add_argument("--eta", type=float, default=0.05, help="step size: RMS change of the latent per step")
    sample.add_argument("--w-prior", type=float, default=1.0, help="weight of the prior loss (0 = off)")
    sample.add_argument("--w-direct", type=float, default=1.0, help="weight of the direct contrastive loss (0 = off)")
    sample.add_argument("--n-refs", type=int, default=4, help="fair and stereotypical references per image")
    sample.add_argument("--out", type=Path, required=True, help="output folder for the corrected PNGs")
    sample.add_argument("--compare", type=Path, default=None, help="also write a baseline | corrected grid PNG here")
    sample.set_defaults(func=cmd_sample)
