"""`SFSLTrainer`: the SFSL objective (objective.py) run by the LoRA training loop
(../loop.py), which holds accumulation, clipping, AdamW, the LR schedule, the non-finite
check, checkpoints (both adapters), resume and the kohya export (`lora_unet_*` + `lora_te_*`).
"""

from __future__ import annotations

from pathlib import Path

from ..loop import LoRALoop
from .classifier import Classifier
from .config import SFSLConfig
from .objective import SFSLObjective


class SFSLTrainer(LoRALoop):
    """`instances`/`classes`: datasets from `data.load_image_folder` (classes may be None
    when prior_loss_weight is 0). `classifier`: the feature classifier, loaded from
    `config.classifier_weights` when not given (only needed when spurious_weight > 0)."""

    objective: SFSLObjective

    def __init__(self, bundle, instances, classes, config: SFSLConfig, output_dir: str | Path | None = None,
                 classifier: Classifier | None = None):
        super().__init__(bundle, SFSLObjective(bundle, instances, classes, config, classifier), output_dir)
