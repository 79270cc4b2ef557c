"""SCoFT Train -> scoft_train.stages.train_scoft -> SCOFT_LORA.

SCoFT Train shows what a user changes every run (MAIN_SETTINGS); SCoFT Advanced Settings
carries every other TrainConfig field and preview_every, and unconnected means its defaults.
The deprecated full node (id SCoFTTrain, every setting as a widget, in the order saved
workflows hold) runs the same code, so older workflows still load and train alike.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

import torch
from PIL import Image

from ..scoft_train import checkpoint as ckpt
from ..scoft_train.config import LossWeights, TrainConfig
from ..scoft_train.images import pil_to_batch
from ..scoft_train.stages import train_scoft
from .common import (
    FEATURES_KIND, NONE, SCOFT_DATASET, SCOFT_LORA, SCOFT_MODEL, LoraFile, check_model_path, model_path,
    progress_callback, tip, weight_choices,
)
from .settings import AdvancedSettings, checked_settings, widget_defaults
from .settings import widgets as derived_widgets

logger = logging.getLogger(__name__)

RUNS_FOLDER = "scoft_runs"
SCOFT_TRAIN_SETTINGS = "SCOFT_TRAIN_SETTINGS"
PREVIEW_EVERY = 50
PREVIEW_PROMPTS = "four of the dataset's prompts"
LORA_NAME = "scoft_lora.safetensors"
WEIGHT_PREFIX = "weight_"

WEIGHT_RANGE = dict(min=0.0, max=100.0, step=0.001)
# ComfyUI saves widget values by position, so this order is part of every saved workflow:
# TrainConfig's fields as the node has always listed them (`weights` = one FLOAT per loss).
WIDGET_ORDER = (
    "preset", "weights", "steps", "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_steps", "max_grad_norm",
    "rank", "alpha", "seed", "contrastive_every", "denoise_steps", "cfg", "grad_mode", "perceptual_backbone",
    "perceptual_weights", "contrastive_backbone", "contrastive_weights", "allow_random_backbone", "contrastive_form",
    "margin", "mixed_precision", "gradient_checkpointing", "checkpoint_every", "checkpoint_limit",
)
WEIGHT_PATHS = ("perceptual_weights", "contrastive_weights")  # combos of the feature_backbones folders
# On SCoFT Train itself, in this order: what a user changes every run.
MAIN_SETTINGS = ("preset", "steps", "rank", "lr", "seed")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def config_widgets() -> dict[str, tuple]:
    """Every TrainConfig field in WIDGET_ORDER, derived from its declaration; `weights`
    expands to one FLOAT per loss."""
    widgets = {}
    for name in WIDGET_ORDER:
        if name != "weights":
            widgets.update(derived_widgets(TrainConfig, [name]))
            continue
        defaults = LossWeights()
        for weight in dataclasses.fields(LossWeights):
            widgets[WEIGHT_PREFIX + weight.name] = ("FLOAT", tip(
                f"weight of L_{weight.name} in the total loss (0..100); used only when the preset enables "
                f"it. Reference: {getattr(defaults, weight.name):g}",
                default=getattr(defaults, weight.name), **WEIGHT_RANGE,
            ))
    for name in WEIGHT_PATHS:
        widgets[name] = ([NONE, *weight_choices(FEATURES_KIND)], tip(
            f"{TrainConfig.help(name)}: a file (or a model folder with config.json) in the '{FEATURES_KIND}' "
            f"folders (models/{FEATURES_KIND} and any '{FEATURES_KIND}:' root in extra_model_paths.yaml). "
            f"'{NONE}' = the backbone's default (the shipped judge for biaslab-judge; LPIPS and hf need a file). "
            "Paths outside those folders are refused unless ComfyUI runs with SCOFT_ALLOW_ANY_PATH=1.",
            default=NONE,
        ))
    return widgets


def weight_paths(settings: dict) -> dict:
    """perceptual_weights / contrastive_weights: a name from the feature_backbones folders -> its confined
    full path; 'none' or empty -> '' (None in TrainConfig)."""
    resolved = dict(settings)
    for name in WEIGHT_PATHS:
        value = (resolved.get(name) or "").strip()
        resolved[name] = "" if value in ("", NONE) else str(model_path(name, value, FEATURES_KIND))
    return resolved


def build_config(values: dict) -> TrainConfig:
    """Widget values -> TrainConfig: weight_* regrouped, empty optional paths -> None."""
    optional = {spec.name for spec in dataclasses.fields(TrainConfig) if spec.default is None}
    settings = {k: v for k, v in values.items() if not k.startswith(WEIGHT_PREFIX)}
    settings["weights"] = {k[len(WEIGHT_PREFIX):]: v for k, v in values.items() if k.startswith(WEIGHT_PREFIX)}
    for name in optional:
        settings[name] = settings.get(name) or None
    return TrainConfig.from_dict(settings)


def run_folder(run_name: str) -> Path:
    import folder_paths

    if not _RUN_NAME.match(run_name):
        raise ValueError(
            f"run_name {run_name!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit "
            f"(it names the folder output/{RUNS_FOLDER}/<run_name>)"
        )
    return Path(folder_paths.get_output_directory()) / RUNS_FOLDER / run_name


def preview_input(prompts: str) -> tuple:
    """The preview_every widget of a training node; `prompts` names what a preview samples."""
    return ("INT", tip(
        f"Every N steps, sample {prompts} (prompt i from seed + i) with the model being trained, next to the base "
        "model's images and the loss curves so far; shown in the training node while it trains and saved as "
        f"output/{RUNS_FOLDER}/<run_name>/previews/step_XXXXXX.png (the last step always gets one). Each preview "
        "costs about one sampling of those prompts (the base model's are made once). 0 = off. (integer 0..1000000)",
        default=PREVIEW_EVERY, min=0, max=1_000_000,
    ))


def preview_callback():
    """An engine on_preview(step, total, image) that shows the PIL image in the running node
    through ComfyUI's progress preview (a ("PNG", image, max side) tuple, kept at full size)."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(1)

    def on_preview(step: int, total: int, image) -> None:
        bar.update_absolute(step, total, ("PNG", image, max(image.size)))

    return on_preview


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What a training node hands back: the LoRA, its loss plot as an IMAGE, a summary head."""

    lora: LoraFile
    loss_plot: object
    report: str


def run_training(train, folder: Path, steps: int, resume: bool, label: str, **kwargs) -> TrainingRun:
    """Call an engine stage `train(..., folder, on_step=, resume=, **kwargs)` with ComfyUI's
    progress bar, autograd back on (nodes run under inference mode) and resume from the
    newest checkpoint in `folder` when asked; summarise steps, time and final losses."""
    checkpoints = ckpt.list_checkpoints(folder / "checkpoints") if resume else []
    if resume and not checkpoints:
        logger.info("resume: no checkpoint in %s yet; training from step 0", folder / "checkpoints")
    started = time.monotonic()
    with torch.inference_mode(False), torch.enable_grad():
        outputs = train(output_dir=folder, on_step=progress_callback(steps), on_preview=preview_callback(),
                        resume=bool(checkpoints), **kwargs)
    lora = LoraFile.from_file(outputs.lora)
    with Image.open(outputs.loss_plot) as plot:
        loss_plot = pil_to_batch(plot)
    last = outputs.history[-1] if outputs.history else {}
    losses = ", ".join(f"{key.split('/')[-1]} {value:.4g}" for key, value in last.items() if key.startswith("loss/"))
    report = (
        f"{label}: {last.get('step', 0)}/{steps} steps in {time.monotonic() - started:.1f} s"
        + (f" (resumed from {outputs.resumed_from.name})" if outputs.resumed_from else "")
        + f"\nfinal loss {last.get('loss', float('nan')):.4g} ({losses})"
        + f"\nloss plot: {outputs.loss_plot}"
    )
    return TrainingRun(lora, loss_plot, report)


BASE_INPUTS = {
    "model": (SCOFT_MODEL, tip("Base model from Load SCoFT Model; it is copied, never changed.")),
    "dataset": (SCOFT_DATASET, tip("CCUB dataset from Load CCUB Dataset.")),
}


def advanced_widgets() -> dict[str, tuple]:
    """SCoFT Advanced Settings: every TrainConfig widget except MAIN_SETTINGS, in WIDGET_ORDER, then preview_every."""
    widgets = {name: spec for name, spec in config_widgets().items() if name not in MAIN_SETTINGS}
    widgets["preview_every"] = preview_input(PREVIEW_PROMPTS)
    return widgets


def check_weight_paths(perceptual_weights, contrastive_weights):
    """VALIDATE_INPUTS of the nodes showing the backbone weight combos ('' from older workflows = none)."""
    for name, value in (("perceptual_weights", perceptual_weights), ("contrastive_weights", contrastive_weights)):
        verdict = check_model_path(name, value, FEATURES_KIND)
        if verdict is not True:
            return verdict
    return True


def train_lora(model, dataset, run_name: str, resume: bool, values: dict):
    """Both SCoFT Train nodes: widget values (every TrainConfig widget and preview_every) -> a trained LoRA."""
    settings = dict(values)
    preview_every = settings.pop("preview_every")
    config = build_config(weight_paths(settings))
    run = run_training(
        train_scoft, run_folder(run_name), config.steps, resume, f"SCoFT {config.preset}",
        bundle=model, dataset=dataset, config=config, lora_name=LORA_NAME, preview_every=preview_every,
    )
    summary = f"{run.report}\nLoRA rank {run.lora.rank}, alpha {run.lora.alpha:g}: {run.lora.path}"
    logger.info("%s", summary.replace("\n", "; "))
    return (run.lora, run.loss_plot, summary)


def run_inputs(default_run: str, what: str) -> dict[str, tuple]:
    """The run_name and resume widgets of a training node; `what` lists what the work folder holds."""
    return {
        "run_name": ("STRING", tip(
            f"Work folder output/{RUNS_FOLDER}/<run_name> for {what}.",
            default=default_run,
        )),
        "resume": ("BOOLEAN", tip(
            "Continue from the newest checkpoint in this run's work folder (written on Cancel or every "
            "checkpoint_every steps); the settings must match. Off, or no checkpoint yet = start at step 0.",
            default=False,
        )),
    }


class SCoFTTrainSettings:
    DESCRIPTION = (
        "Every SCoFT training setting that SCoFT Train does not show: loss weights, optimizer, LoRA alpha, the "
        "decoded-generation branch, feature backbones, precision, checkpoints and previews. Connect to SCoFT "
        "Train's settings input; without it SCoFT Train uses these defaults."
    )
    CATEGORY = "SCoFT/train"
    FUNCTION = "settings"
    RETURN_TYPES = (SCOFT_TRAIN_SETTINGS,)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("The settings, for SCoFT Train's settings input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": advanced_widgets()}

    @classmethod
    def VALIDATE_INPUTS(cls, perceptual_weights, contrastive_weights):
        return check_weight_paths(perceptual_weights, contrastive_weights)

    def settings(self, **values):
        verdict = check_weight_paths(values["perceptual_weights"], values["contrastive_weights"])
        return checked_settings(verdict, values)


class SCoFTTrainLoRA:
    DESCRIPTION = (
        "Trains a SCoFT LoRA on the model's UNet attention layers with the chosen ablation preset "
        "(FT = L_LDM; +M memorization; +P perceptual; +C self-contrastive against the negatives). "
        "Everything else comes from SCoFT Advanced Settings (unconnected = its defaults). "
        "Shows progress; Cancel stops after the current step and saves a checkpoint that 'resume' continues."
    )
    CATEGORY = "SCoFT/train"
    FUNCTION = "train"
    RETURN_TYPES = (SCOFT_LORA, "IMAGE", "STRING")
    RETURN_NAMES = ("lora", "loss_plot", "summary")
    OUTPUT_TOOLTIPS = (
        "The trained LoRA (kohya .safetensors in output/scoft_runs/<run_name>); connect to Save SCoFT LoRA or SCoFT Sampler.",
        "Loss curves per step (total and each enabled loss).",
        "Steps, final losses, time and file paths of this run.",
    )
    RUN_CONTENTS = "the LoRA, loss history, plot and checkpoints"

    @classmethod
    def INPUT_TYPES(cls):
        widgets = config_widgets()
        return {
            "required": {
                **BASE_INPUTS,
                **{name: widgets[name] for name in MAIN_SETTINGS},
                **run_inputs("scoft", cls.RUN_CONTENTS),
            },
            "optional": {
                "settings": (SCOFT_TRAIN_SETTINGS, tip(
                    "Everything else (loss weights, optimizer, LoRA alpha, branch, backbones, precision, checkpoints, "
                    "previews) from SCoFT Advanced Settings; unconnected = that node's defaults."
                )),
            },
        }

    def train(self, model, dataset, run_name: str, resume: bool, settings: AdvancedSettings | None = None, **main):
        advanced = settings.values if settings is not None else widget_defaults(advanced_widgets())
        return train_lora(model, dataset, run_name, resume, {**advanced, **main})


class SCoFTTrain(SCoFTTrainLoRA):
    """The full node of older workflows: every setting as a widget, in the saved order."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: use SCoFT Train with SCoFT Advanced Settings. Kept so older workflows load and run "
        "unchanged: every training setting as a widget, trained exactly like SCoFT Train."
    )
    CATEGORY = "SCoFT/deprecated"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **BASE_INPUTS,
                **config_widgets(),
                **run_inputs("scoft", cls.RUN_CONTENTS),
                "preview_every": preview_input(PREVIEW_PROMPTS),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, perceptual_weights, contrastive_weights):
        return check_weight_paths(perceptual_weights, contrastive_weights)

    def train(self, model, dataset, run_name: str, resume: bool, **values):
        return train_lora(model, dataset, run_name, resume, values)
