"""The bias lab: a synthetic world where SCoFT's effect can be measured without humans.

Five invented cultures, four concepts, one shared stereotype (`world`); a procedural
renderer (`render`); a biased web corpus and a sample CCUB folder (`corpus`); a tiny
SD-1.x world model, its depth ControlNet and a judge trained by `pretrain` and shipped
in `WEIGHTS_DIR` (loaders in `artefacts`); and the ablation `ablate` (FT, FT+M, FT+MP,
FT+MPC against the base model, judged). See README.md beside this file. The shipped
artefacts' paths live in `scoft_train.assets`, re-exported here.
"""

from ..assets import (
    AWNING_REFS_DIR,
    BIASLAB_CCUB_DIR,
    CONTROLNET_DIR,
    JUDGE_DIR,
    SPURIOUS_DIR,
    WEIGHTS_DIR,
    WORLD_DIR,
)

__all__ = ["AWNING_REFS_DIR", "BIASLAB_CCUB_DIR", "CONTROLNET_DIR", "JUDGE_DIR", "SPURIOUS_DIR", "WEIGHTS_DIR",
           "WORLD_DIR"]
