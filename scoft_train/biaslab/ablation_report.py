"""The ablation's record and its rendering: rates with intervals per row, prompt set and
scorer; paired differences; image-set metrics over seeds; scorer agreement. results.md
is `render_markdown(results.json)`, nothing else, so the shipped pair can be checked.

`loaded`: {row: {training seed (None for untrained rows): unit}}, a unit as
`ablate._score_unit` makes it ("<scorer>/<what>": bool [N], "images", "metrics").
`prompts`: the N sample prompts (text, culture, concept, set), `per_prompt` in a row.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .intervals import cut_interval, difference_interval, excludes_zero, format_interval, rate_interval
from .prompt_sets import TEST_SETS
from .report import comparison_grid, example_grid
from .scoring import DEVELOPMENT, INDEPENDENT, SCORER_TITLES, agreement
from .world import MINORITY

BASE = "base"
SETS = (*TEST_SETS, "all")
VERDICTS = ("stereotype", "relevant", "faithful")
IMAGE_METRICS = ("memorization", "diversity", "kid", "seconds_per_image", "train_seconds")
STEREOTYPE = "stereotype"


def _cells(units: dict, key: str, per_prompt: int) -> np.ndarray:
    """[S, P]: per training seed, the share of each prompt's samples where `key` holds."""
    return np.stack([units[s][key].reshape(-1, per_prompt).mean(axis=1) for s in sorted(units, key=str)])


def _masks(prompts, per_prompt: int) -> dict[tuple[str, str], np.ndarray]:
    """(set, "minority"/"all") -> bool [P] over the unique prompts."""
    unique = prompts[::per_prompt]
    masks = {}
    for name in SETS:
        in_set = np.array([name == "all" or p[3] == name for p in unique])
        masks[(name, "all")] = in_set
        masks[(name, "minority")] = in_set & np.array([p[1] in MINORITY for p in unique])
    return masks


def aggregate(loaded: dict[str, dict], prompts: list, per_prompt: int,
              differences: list[tuple[str, str]]) -> dict:
    masks = _masks(prompts, per_prompt)
    keys = [k for k in next(iter(loaded[next(iter(loaded))].values())) if "/" in k]
    rates, per_seed, image_metrics = {}, {}, {}
    for row, units in loaded.items():
        rates[row] = {name: {key: {who: rate_interval(_cells(units, key, per_prompt)[:, masks[(name, who)]])
                                   for who in ("minority", "all") if masks[(name, who)].any()}
                             for key in keys}
                      for name in SETS}
        per_seed[row] = {str(seed): {
            "stereotype_minority": {name: {scorer: float(unit[f"{scorer}/{STEREOTYPE}"].reshape(-1, per_prompt)
                                                     .mean(axis=1)[masks[(name, "minority")]].mean())
                                           for scorer in (*INDEPENDENT, DEVELOPMENT)} for name in SETS},
            **{m: unit["metrics"][m] for m in IMAGE_METRICS if m in unit["metrics"]}}
            for seed, unit in units.items()}
        image_metrics[row] = {}
        for metric in IMAGE_METRICS:
            values = [unit["metrics"][metric] for unit in units.values() if metric in unit["metrics"]]
            if values:
                image_metrics[row][metric] = {"mean": float(np.mean(values)), "sd": float(np.std(values)),
                                              "seeds": len(values)}
    diffs = {}
    for a, b in differences:
        diffs[f"{a} − {b}"] = {
            name: {scorer: difference_interval(_cells(loaded[a], f"{scorer}/{STEREOTYPE}", per_prompt)[:, mask],
                                               _cells(loaded[b], f"{scorer}/{STEREOTYPE}", per_prompt)[:, mask])
                   for scorer in (*INDEPENDENT, DEVELOPMENT)}
            for name in SETS for mask in [masks[(name, "minority")]] if mask.any()}
    base = {scorer: _cells(loaded[BASE], f"{scorer}/{STEREOTYPE}", per_prompt) for scorer in INDEPENDENT} \
        if BASE in loaded else {}
    cuts = {row: {name: {scorer: cut_interval(_cells(loaded[row], f"{scorer}/{STEREOTYPE}", per_prompt)[:, mask],
                                              base[scorer][:, mask]) for scorer in base}
                  for name in SETS for mask in [masks[(name, "minority")]] if mask.any()}
            for row in loaded if row != BASE and base}
    pooled = {scorer: np.concatenate([u[f"{scorer}/{STEREOTYPE}"] for units in loaded.values() for u in units.values()])
              for scorer in (*INDEPENDENT, DEVELOPMENT)}
    pairs = [("second_judge", "rules"), ("judge", "second_judge"), ("judge", "rules")]
    return {
        "prompt_sets": {name: sorted({p[0] for p in prompts if p[3] == name}) for name in TEST_SETS},
        "samples_per_prompt": per_prompt,
        "samples_per_row_and_seed": len(prompts),
        "independent_scorers": list(INDEPENDENT),
        "rates": rates,
        "differences": diffs,
        "cuts_against_base": cuts,
        "per_seed": per_seed,
        "image_metrics": image_metrics,
        "scorer_agreement_stereotype": {f"{a} vs {b}": agreement(pooled[a], pooled[b]) for a, b in pairs},
    }


def _interval(rates: dict, row: str, name: str, key: str, who: str = "minority") -> str:
    value = rates[row][name][key].get(who)
    return format_interval(value) if value else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _row_label(record: dict, row: str) -> str:
    info = record["rows"][row]
    space = info.get("feature_space")
    if info.get("circular"):
        return f"{row} ⚠ circular: L_P/L_C in the development judge's features"
    return f"{row} (L_P/L_C: {space})" if info.get("trained") and info.get("preset") in ("FT+MP", "FT+MPC") else row


def render_markdown(record: dict) -> str:
    """results.md of an ablation record (results.json), deterministic."""
    rates, rows = record["rates"], list(record["rates"])
    seeds = record["provenance"]["seeds"]
    out = [f"# {record['title']}\n"]
    out.append(
        f"Every rate: mean over training seeds {seeds} and prompts, with its 95% bootstrap interval over seeds and "
        f"prompts; {record['samples_per_prompt']} samples per prompt, the same sampling seeds for every row. "
        "Scored only by the scorers no training loss loads (second judge, rule-based), unless marked.\n")
    for scorer in record["independent_scorers"]:
        out.append(f"## Minority stereotype rate, {SCORER_TITLES[scorer]} (lower is better)\n")
        out.append(_table(["row", *TEST_SETS, "all prompts"],
                          [[_row_label(record, r), *(_interval(rates, r, s, f"{scorer}/stereotype") for s in SETS)]
                           for r in rows]))
    out.append("## Paired differences in the minority stereotype rate (negative = fewer stereotypes)\n")
    out.append("An effect is stated only where its interval excludes zero for both independent scorers.\n")
    diff_rows = []
    for name, by_set in record["differences"].items():
        for set_name, by_scorer in by_set.items():
            cells = [format_interval(by_scorer[s], signed=True) for s in record["independent_scorers"]]
            holds = all(excludes_zero(by_scorer[s]) for s in record["independent_scorers"])
            diff_rows.append([name, set_name, *cells, "yes" if holds else "no: interval includes zero"])
    out.append(_table(["difference", "prompts", *(SCORER_TITLES[s] for s in record["independent_scorers"]),
                       "holds"], diff_rows))
    if "cuts_against_base" in record:
        out.extend(_cuts_section(record))
    out.append("## Cultural relevance and description fidelity, all prompts (higher is better)\n")
    out.append(_table(["row", "relevance, minority (second judge)", "relevance, minority (rule-based)",
                       "fidelity (second judge)", "stereotype, all cultures (second judge)"],
                      [[r, _interval(rates, r, "all", "second_judge/relevant"),
                        _interval(rates, r, "all", "rules/relevant"),
                        _interval(rates, r, "all", "second_judge/faithful", "all"),
                        _interval(rates, r, "all", "second_judge/stereotype", "all")] for r in rows]))
    out.append("## Image-set metrics (mean ± sd over seeds)\n")
    metric_titles = {"memorization": "memorization (lower)", "diversity": "diversity (higher)",
                     "kid": "KID, second-judge features (lower)", "seconds_per_image": "seconds per image",
                     "train_seconds": "training seconds"}
    out.append(_table(["row", *metric_titles.values()], [
        [r, *(f"{m['mean']:.4f} ± {m['sd']:.4f}" if (m := record["image_metrics"][r].get(k)) else "n/a"
              for k in metric_titles)] for r in rows]))
    out.append("## Development judge (it is the circular row's feature space; not a headline scorer)\n")
    out.append(_table(["row", *TEST_SETS, "all prompts"],
                      [[r, *(_interval(rates, r, s, f"{DEVELOPMENT}/stereotype") for s in SETS)] for r in rows]))
    out.append("## Per training seed: minority stereotype rate, all prompts\n")
    seed_rows = []
    for r in rows:
        for seed, values in record["per_seed"][r].items():
            seed_rows.append([r, "-" if seed == "None" else seed,
                              *(f"{values['stereotype_minority']['all'][s]:.3f}" for s in
                                (*record["independent_scorers"], DEVELOPMENT))])
    out.append(_table(["row", "seed", *(SCORER_TITLES[s] for s in (*record["independent_scorers"], DEVELOPMENT))],
                      seed_rows))
    out.append("## Scorer agreement on the stereotype verdict (every generated image)\n")
    out.append(_table(["scorers", "agreement", "Cohen's kappa"],
                      [[name, f"{v['agreement']:.3f}", f"{v['kappa']:.3f}"]
                       for name, v in record["scorer_agreement_stereotype"].items()]))
    if any("denoise_steps" in info for info in record["rows"].values()):
        out.extend(_branch_section(record))
    sweep = record["rs_corrector_sweep"]
    if sweep is not None:
        out.extend(_sweep_section(sweep))
    out.append("## Notes\n")
    out.extend(f"- {note}" for note in _notes(record))
    return "\n".join(out) + "\n"


def _cuts_section(record: dict) -> list[str]:
    """The share of the base model's minority stereotype rate each row removes, with its interval."""
    scorers = record["independent_scorers"]
    rows = [[row, name, *(format_interval(by_set[name][s]) if by_set[name][s] else "n/a (base rate 0)" for s in scorers)]
            for row, by_set in record["cuts_against_base"].items() for name in by_set]
    return ["## Cut of the minority stereotype rate against base (1 − row / base; 0.60 = a 60% cut)\n",
            "Paired like the differences: each replicate draws the same seeds and prompts for the row and the base "
            "model.\n",
            _table(["row", "prompts", *(SCORER_TITLES[s] for s in scorers)], rows)]


def _branch_section(record: dict) -> list[str]:
    """Cost and effect of the decoded-generation branch settings: each unit's recorded training seconds
    against FT's, and the minority stereotype rate's reduction against FT."""
    c, rates, times = record["provenance"]["config"], record["rates"], record["image_metrics"]
    scorer = record["independent_scorers"][0]

    def rate(row: str) -> float:
        return rates[row]["all"][f"{scorer}/stereotype"]["minority"]["mean"]

    full = rate("FT") - rate("FT+MPC") if "FT+MPC" in rates else None
    factors = any("branch_weight_factor" in info for info in record["rows"].values())
    dropped_mem = any(info.get("memorization_loss") is False for info in record["rows"].values())
    rows = []
    for row, info in record["rows"].items():
        branch_row = "denoise_steps" in info
        if not info.get("trained") or info.get("circular") or (row not in ("FT", "FT+MPC") and not branch_row):
            continue
        steps, every = ((info["denoise_steps"], info["contrastive_every"]) if branch_row
                        else (c["denoise_steps"], c["contrastive_every"]) if row != "FT" else ("-", "-"))
        cut = rate("FT") - rate(row)
        share = f"{cut / full:.0%}" if row != "FT" and full is not None and full > 0 else "-"
        factor = [f"x{info.get('branch_weight_factor', 1.0):g}" if row != "FT" else "-"] if factors else []
        mem = [("off" if info.get("memorization_loss") is False else "on") if row != "FT" else "-"] if dropped_mem else []
        rows.append([row, str(steps), str(every), *factor, *mem, f"{times[row]['train_seconds']['mean']:.0f}",
                     f"{times[row]['train_seconds']['mean'] / times['FT']['train_seconds']['mean']:.2f}x",
                     _interval(rates, row, "all", f"{scorer}/stereotype"), f"{cut:+.3f}", share])
    return [
        f"## Decoded-branch settings: cost and effect ({SCORER_TITLES[scorer]}, all prompts)\n",
        "Training seconds are means over seeds of each unit's recorded wall time, so they carry the machine's "
        "load at the time (`bench train` measures clean step ratios side by side); x FT is the ratio to plain "
        "LoRA training (FT). Reduction = FT's rate minus the row's; share = that "
        "reduction over FT+MPC's (noisy where FT+MPC's own lead over FT does not hold: see the paired "
        "differences).\n",
        _table(["row", "denoise steps S", "branch every", *(["L_P, L_C weight"] if factors else []),
                *(["L_M"] if dropped_mem else []), "training s", "x FT", "minority stereotype rate",
                "reduction vs FT", "share of FT+MPC's"], rows),
    ]


def _sweep_section(sweep: dict) -> list[str]:
    out = [f"## RS-Corrector sweep (validation prompts, {sweep['samples']} samples, read by the "
           f"{sweep['selected_by']}; chosen: lowest stereotype rate with fidelity within "
           f"{sweep['fidelity_slack']} of uncorrected)\n"]
    out.append(_table(["last K", "M", "eta", "stereotype (validation)", "fidelity (validation)", "seconds per image"],
                      [[str(s["last_k"]), str(s["m_steps"]), f"{s['eta']:g}", f"{s['validation_stereotype']:.3f}",
                        f"{s['validation_fidelity']:.3f}", f"{s['seconds_per_image']:.4f}"]
                       for s in sweep["settings"]]))
    out.append(f"Chosen: {sweep['best']}. K = 0 is uncorrected sampling.\n")
    return out


def _notes(record: dict) -> list[str]:
    ref, prov, c = record["memorization_reference_distances"], record["provenance"], record["provenance"]["config"]
    cells = ", ".join(f"{culture} {concept}" for culture, concept in record["held_out_cells"])
    sets = record["prompt_sets"]
    return [
        f"Prompt sets: seen = {len(sets['seen'])} prompts in the CCUB captions' wordings; unseen = "
        f"{len(sets['unseen'])} prompts in wordings no CCUB or web-corpus caption uses; held-out cells = "
        f"{len(sets['held-out cells'])} prompts on {cells}, whose images were removed from the fine-tuning CCUB "
        f"({record['ccub_images_fine_tuned']} images remain).",
        f"LoRA: rank {c['rank']}, {c['steps']} steps, batch {c['batch_size']}, lr {c['lr']}; decoded branch every "
        f"{c['contrastive_every']} steps with {c['denoise_steps']} denoising steps. Sampling: DDIM {c['sample_steps']} "
        f"steps, cfg {c['cfg']}.",
        f"Negatives: {record['negatives']['count']} ({c['negatives_k']} per CCUB image) from the world model + depth "
        f"ControlNet; judged stereotype: " + ", ".join(
            f"{SCORER_TITLES[k]} {v:.0%}" for k, v in record["negatives"]["judged_stereotype"].items()) + ".",
        f"Memorization: nearest VAE round-tripped CCUB image closer than RMSE {ref['copy_threshold']}; a decoded "
        f"posterior sample of a CCUB image sits at {ref['decoded_ccub_sample_median']:.3f}, a fresh authentic render "
        f"at {ref['fresh_authentic_median']:.3f} (medians); {ref['fresh_authentic_flagged']:.1%} of fresh renders are "
        "flagged. KID compares round-tripped authentic renders with the (decoded) samples.",
        f"Code {prov['code']['commit']}{' (with uncommitted changes)' if prov['code']['dirty'] else ''}; "
        f"wall time of the final invocation {prov['wall_time_s']:.0f} s (finished units are reused); training and "
        f"sampling time of all units {record['unit_compute_seconds']:.0f} s; {prov['environment']['threads']} torch "
        f"threads; finished {prov['finished_utc']}.",
    ]


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def write_images(out_dir: Path, loaded: dict, prompts: list, per_prompt: int, seed: int, slug) -> None:
    """grids/<row>.png (first seed) and comparison.png (minority prompts, one sample each)."""
    unique = [p[0] for p in prompts[::per_prompt]]
    chosen = {row: _tensor(units[seed if seed in units else None]["images"]) for row, units in loaded.items()}
    for row, images in chosen.items():
        example_grid(images, unique, per_prompt, out_dir / "grids" / f"{slug(row)}.png")
    minority = [i * per_prompt for i, p in enumerate(prompts[::per_prompt]) if p[1] in MINORITY]
    step = max(1, math.ceil(len(minority) / 12))
    comparison_grid(chosen, [p[0] for p in prompts], minority[::step], out_dir / "comparison.png")
