"""SFSL Train: reference spurious images + cached class images -> scoft_train.sfsl.train_sfsl -> SCOFT_LORA.

SFSL Train shows what a user changes every run (MAIN_SETTINGS); SFSL Advanced Settings
carries every other SFSLConfig field, the class-image settings and preview_every, and
unconnected means its defaults. Widgets are derived from the SFSLConfig declarations
(help text as tooltip, ranges and combos shared with SCoFT Train); `classifier_weights`
is a combo of the ComfyUI model folder `classifiers` plus the bias lab's shipped market
classifier. The defaults are the bias lab's spurious experiment (`scoft_train biaslab
sfsl`): eight references of the market awning without a market, class "market", the
shipped classifier's class-wise market features. The deprecated full node (id
SCoFTSFSLTrain, every setting as a widget in the saved order) runs the same code.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from ..scoft_train.assets import AWNING_REFS_DIR, SPURIOUS_CLASSIFIER_DIR
from ..scoft_train.sfsl import SFSLConfig, ensure_class_images, load_image_folder, train_sfsl
from ..scoft_train.sfsl.data import image_files
from ..scoft_train.sfsl.classifier import STATE_SUFFIXES
from ..scoft_train.sfsl.presets import CLASSIFIER_SPEC, SPURIOUS_LAB
from .common import (
    CCUB_KIND, CLASSIFIERS_KIND, SCOFT_LORA, SCOFT_MODEL, SAMPLE, check_folder, check_model_path, dataset_choices,
    input_folder, model_path, progress_callback, tip, weight_choices,
)
from .settings import AdvancedSettings, checked_settings, widget_defaults
from .settings import widgets as derived_widgets
from .train import RUNS_FOLDER, preview_input, run_folder, run_inputs, run_training

logger = logging.getLogger(__name__)

SAMPLE_COPY = "scoft_sfsl_refs"
CLASSIFIER_FOLDER = "classifiers"
NO_CLASSIFIER = "none"
SHIPPED_CLASSIFIER = "bias-lab market classifier (shipped)"
LORA_NAME = "sfsl_lora.safetensors"
CLASS_IMAGES = "class_images"
SCOFT_SFSL_SETTINGS = "SCOFT_SFSL_SETTINGS"
PREVIEW_PROMPTS = "the instance and the class prompt"
RUN_CONTENTS = "the class images, LoRA, loss history, plot and checkpoints"

# ComfyUI saves widget values by position, so this order is part of every saved workflow:
# SFSLConfig's fields as the node has always listed them.
WIDGET_ORDER = (
    "class_name", "identifier", "instance_template", "class_template", "prior_loss_weight", "spurious_weight",
    "spurious_every", "classifier", "classifier_weights", "classifier_size", "target_class", "train_text_encoder",
    "steps", "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_steps", "max_grad_norm", "rank", "alpha", "seed",
    "denoise_steps", "cfg", "grad_mode", "mixed_precision", "gradient_checkpointing", "checkpoint_every",
    "checkpoint_limit",
)
# Node defaults that differ from SFSLConfig's: the bias lab's spurious experiment.
NODE_DEFAULTS = SPURIOUS_LAB
# On SFSL Train itself, in this order: what a user changes every run.
MAIN_SETTINGS = ("class_name", "steps", "rank", "lr", "seed")


def classifier_files() -> list[str]:
    """Weight files (and judge-format folders) in the `classifiers` model-folder roots."""
    return weight_choices(CLASSIFIERS_KIND, STATE_SUFFIXES)


def config_widgets() -> dict[str, tuple]:
    """Every SFSLConfig field in WIDGET_ORDER, derived from its declaration with the bias lab's
    defaults; classifier_weights = a combo of the classifiers folders."""
    widgets = derived_widgets(SFSLConfig, list(WIDGET_ORDER), NODE_DEFAULTS)
    widgets["classifier_weights"] = ([NO_CLASSIFIER, SHIPPED_CLASSIFIER, *classifier_files()], tip(
        f"{SFSLConfig.help('classifier_weights')}: a file (or judge-format folder) in the '{CLASSIFIERS_KIND}' "
        f"folders (models/{CLASSIFIER_FOLDER} and extra_model_paths.yaml roots) matching 'classifier', or "
        f"'{SHIPPED_CLASSIFIER}' (the bias lab's {CLASSIFIER_SPEC} network, which learned that markets have an "
        f"awning). '{NO_CLASSIFIER}' = no classifier, which needs spurious_weight 0.",
        default=SHIPPED_CLASSIFIER,
    ))
    widgets["spurious_weight"][1]["tooltip"] += " Needs classifier_weights and target_class."
    return widgets


def build_config(values: dict) -> SFSLConfig:
    """Widget values -> SFSLConfig; the classifier combo -> a full path (or None)."""
    settings = dict(values)
    name = settings.get("classifier_weights") or NO_CLASSIFIER
    if name == NO_CLASSIFIER:
        if settings.get("spurious_weight", 0) > 0:
            raise ValueError(
                f"spurious_weight {settings['spurious_weight']:g} needs a classifier: put its weights in "
                f"models/{CLASSIFIER_FOLDER}, pick them in classifier_weights and set target_class, "
                f"or set spurious_weight 0 (DreamBooth with prior preservation only)"
            )
        settings["classifier_weights"] = None
    elif name == SHIPPED_CLASSIFIER:
        settings["classifier_weights"] = str(SPURIOUS_CLASSIFIER_DIR)
    else:
        path = model_path("classifier_weights", name, CLASSIFIERS_KIND)
        if not path.exists():
            raise FileNotFoundError(f"classifier_weights {name!r} is not in the '{CLASSIFIERS_KIND}' folders "
                                    f"(models/{CLASSIFIER_FOLDER} or extra_model_paths.yaml roots)")
        settings["classifier_weights"] = str(path)
    return SFSLConfig.from_dict(settings)


def sample_references(destination: Path) -> Path:
    """A working copy of the shipped reference images at `destination`, made once (staged, then renamed)."""
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        (staging / "copy").mkdir()
        for image in image_files(AWNING_REFS_DIR):
            shutil.copy2(image, staging / "copy" / image.name)
        (staging / "copy").rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def resolve_folder(folder: str) -> Path:
    """'' or 'sample' = input/scoft_sfsl_refs (a copy of the shipped bias-lab awning references); relative =
    under ComfyUI's input dir."""
    return input_folder(folder, lambda base: sample_references(base / SAMPLE_COPY), "instance_folder")


def class_image_widgets() -> dict[str, tuple]:
    """The number and denoising steps of the cached prior-preservation images."""
    return {
        "class_images": ("INT", tip(
            "Number of class (prior-preservation) images of the class prompt, generated by the frozen model "
            f"and cached in output/{RUNS_FOLDER}/<run_name>/{CLASS_IMAGES} (only missing ones are made; "
            "image i from seed + i, at cfg). Unused when prior_loss_weight is 0. (integer 1..10000)",
            default=50, min=1, max=10_000,
        )),
        "class_image_steps": ("INT", tip(
            "Denoising steps (DDIM) per class image (integer 1..1000). Changing it, the class prompt, seed "
            "or cfg with an existing cache is refused: use another run_name.",
            default=30, min=1, max=1000,
        )),
    }


def advanced_widgets() -> dict[str, tuple]:
    """SFSL Advanced Settings: every SFSLConfig widget except MAIN_SETTINGS, in WIDGET_ORDER, then the
    class-image settings and preview_every."""
    widgets = {name: spec for name, spec in config_widgets().items() if name not in MAIN_SETTINGS}
    return {**widgets, **class_image_widgets(), "preview_every": preview_input(PREVIEW_PROMPTS)}


def base_inputs() -> dict[str, tuple]:
    """model and instance_folder (a dropdown of the dataset folders there are now)."""
    return {
        "model": (SCOFT_MODEL, tip("Base model from Load SCoFT Model; it is copied, never changed.")),
        "instance_folder": (dataset_choices(), tip(
            "Folder of reference spurious images (png/jpg/webp, all with the instance prompt), from the "
            f"'{CCUB_KIND}' folders (ComfyUI/input/{CCUB_KIND}/ and any '{CCUB_KIND}:' root in "
            f"extra_model_paths.yaml). '{SAMPLE}' = eight bias-lab images of the market awning without a "
            f"market, shipped with the engine (copied once to input/{SAMPLE_COPY}). Folders outside those "
            "roots are refused unless ComfyUI runs with SCOFT_ALLOW_ANY_PATH=1.",
            default=SAMPLE,
        )),
    }


def check_classifier(classifier_weights):
    """VALIDATE_INPUTS of the classifier combo: older values pass the list check, so they are confined here."""
    return check_model_path("classifier_weights", classifier_weights, CLASSIFIERS_KIND,
                            ("", NO_CLASSIFIER, SHIPPED_CLASSIFIER))


def train_lora(model, instance_folder: str, run_name: str, resume: bool, values: dict):
    """Both SFSL Train nodes: widget values (every SFSLConfig widget, the class-image settings and
    preview_every) -> class images, then a trained LoRA."""
    settings = dict(values)
    class_images, class_image_steps = settings.pop("class_images"), settings.pop("class_image_steps")
    preview_every = settings.pop("preview_every")
    config = build_config(settings)
    folder = run_folder(run_name)
    references = resolve_folder(instance_folder)
    resolution = model.resolution
    instances = load_image_folder(references, config.instance_prompt, resolution=resolution)

    classes, class_note = None, "class images: none (prior_loss_weight 0)"
    if config.prior_loss_weight > 0:
        class_folder = folder / CLASS_IMAGES
        try:
            ensure_class_images(model, class_folder, config.class_prompt, count=class_images, seed=config.seed,
                                steps=class_image_steps, cfg=config.cfg, on_step=progress_callback(class_images))
        except ValueError as error:
            raise ValueError(f"{error} (run_name {run_name!r}: pick another run_name for new class-image "
                             "settings)") from error
        classes = load_image_folder(class_folder, config.class_prompt, resolution=resolution)
        class_note = f"class images: {len(classes)} of {config.class_prompt!r} in {class_folder}"

    run = run_training(
        train_sfsl, folder, config.steps, resume, f"SFSL {config.instance_prompt!r}",
        bundle=model, instances=instances, classes=classes, config=config, lora_name=LORA_NAME,
        preview_every=preview_every,
    )
    summary = (
        f"{run.report}\nreferences: {len(instances)} images in {references}\n{class_note}"
        f"\nLoRA rank {run.lora.rank}, alpha {run.lora.alpha:g}, text encoder "
        + ("trained" if config.train_text_encoder else "frozen")
        + f": {run.lora.path}"
    )
    logger.info("%s", summary.replace("\n", "; "))
    return (run.lora, run.loss_plot, summary)


class SFSLTrainSettings:
    DESCRIPTION = (
        "Every SFSL setting that SFSL Train does not show: prompt templates, prior preservation, the spurious "
        "loss and its classifier, text-encoder training, optimizer, LoRA alpha, precision, checkpoints, class "
        "images and previews. Connect to SFSL Train's settings input; without it SFSL Train uses these defaults "
        "(the bias lab's spurious experiment)."
    )
    CATEGORY = "SCoFT/sfsl"
    FUNCTION = "settings"
    RETURN_TYPES = (SCOFT_SFSL_SETTINGS,)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("The settings, for SFSL Train's settings input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": advanced_widgets()}

    @classmethod
    def VALIDATE_INPUTS(cls, classifier_weights):
        return check_classifier(classifier_weights)

    def settings(self, **values):
        return checked_settings(check_classifier(values["classifier_weights"]), values)


class SFSLTrainLoRA:
    DESCRIPTION = (
        "Spurious-feature fine-tuning (SFSL): DreamBooth with prior preservation on a few reference images "
        "of a spurious look ('a photo of sks <class>'), optionally with a class-wise classifier feature "
        "similarity loss. Trains a LoRA on the UNet and the text encoder. Class images are generated once by "
        "the frozen model and cached in the run folder. Everything else comes from SFSL Advanced Settings "
        "(unconnected = its defaults). Shows progress; Cancel stops after the current step and saves a "
        "checkpoint that 'resume' continues."
    )
    CATEGORY = "SCoFT/sfsl"
    FUNCTION = "train"
    RETURN_TYPES = (SCOFT_LORA, "IMAGE", "STRING")
    RETURN_NAMES = ("lora", "loss_plot", "summary")
    OUTPUT_TOOLTIPS = (
        f"The trained LoRA (kohya .safetensors with lora_unet_* and lora_te_* keys in output/{RUNS_FOLDER}/"
        "<run_name>); connect to Save SCoFT LoRA or SCoFT Sampler.",
        "Loss curves per step (total, instance, prior, spurious).",
        "Steps, final losses, class images, time and file paths of this run.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        widgets = config_widgets()
        return {
            "required": {
                **base_inputs(),
                **{name: widgets[name] for name in MAIN_SETTINGS},
                **run_inputs("sfsl", RUN_CONTENTS),
            },
            "optional": {
                "settings": (SCOFT_SFSL_SETTINGS, tip(
                    "Everything else (templates, prior and spurious losses, classifier, text encoder, optimizer, "
                    "LoRA alpha, precision, checkpoints, class images, previews) from SFSL Advanced Settings; "
                    "unconnected = that node's defaults."
                )),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, instance_folder):
        return check_folder(instance_folder, "instance_folder")

    def train(self, model, instance_folder: str, run_name: str, resume: bool,
              settings: AdvancedSettings | None = None, **main):
        advanced = settings.values if settings is not None else widget_defaults(advanced_widgets())
        return train_lora(model, instance_folder, run_name, resume, {**advanced, **main})


class SFSLTrain(SFSLTrainLoRA):
    """The full node of older workflows: every setting as a widget, in the saved order."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: use SFSL Train with SFSL Advanced Settings. Kept so older workflows load and run "
        "unchanged: every SFSL setting as a widget, trained exactly like SFSL Train."
    )
    CATEGORY = "SCoFT/deprecated"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **base_inputs(),
                **config_widgets(),
                **class_image_widgets(),
                **run_inputs("sfsl", RUN_CONTENTS),
                "preview_every": preview_input(PREVIEW_PROMPTS),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, instance_folder, classifier_weights):
        for verdict in (check_folder(instance_folder, "instance_folder"), check_classifier(classifier_weights)):
            if verdict is not True:
                return verdict
        return True

    def train(self, model, instance_folder: str, run_name: str, resume: bool, **values):
        return train_lora(model, instance_folder, run_name, resume, values)
