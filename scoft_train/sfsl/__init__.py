"""Spurious-feature fine-tuning (SFSL, method.md section 3): DreamBooth with prior
preservation on reference spurious images, plus a class-wise classifier feature
similarity loss on the decoded generation; evaluation by spurious rate, similarity
and no-reference quality.

Modules: config (SFSLConfig), data (image folders), class_images (cached prior
images), classifier (local classifiers, class-wise features), objective (the SFSL losses) and trainer
(SFSLTrainer: the LoRA loop, loop.py, with that objective), stages (train_sfsl), evaluate (evaluate_sfsl), quality (TOPIQ),
presets (the bias lab's spurious experiment). The `sfsl` verbs are in ../cli/sfsl.py.
"""

from .class_images import ensure_class_images
from .classifier import Classifier, load_classifier
from .config import SFSLConfig
from .data import load_image_folder
from .evaluate import SFSLReport, evaluate_sfsl
from .stages import train_sfsl
from .trainer import SFSLTrainer

__all__ = [
    "Classifier", "SFSLConfig", "SFSLReport", "SFSLTrainer", "ensure_class_images", "evaluate_sfsl",
    "load_classifier", "load_image_folder", "train_sfsl",
]
