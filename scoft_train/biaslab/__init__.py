"""The bias lab: a synthetic world where SCoFT's effect can be measured without humans.

Five invented cultures, four concepts, one shared stereotype (`world`); a procedural
renderer (`render`); a biased web corpus and a sample CCUB folder (`corpus`); a tiny
SD-1.x world model, its depth ControlNet and a judge trained by `pretrain` and shipped
in `WEIGHTS_DIR` (loaders in `artefacts`); and the ablation `ablate` (FT, FT+M, FT+MP,
FT+MPC against the base model, judged). See README.md beside this file.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BIASLAB_CCUB_DIR = PACKAGE_DIR / "sample_data" / "biaslab_ccub"
WEIGHTS_DIR = PACKAGE_DIR / "weights" / "biaslab"
WORLD_DIR = WEIGHTS_DIR / "world"
CONTROLNET_DIR = WEIGHTS_DIR / "controlnet"
JUDGE_DIR = WEIGHTS_DIR / "judge"
SPURIOUS_DIR = WEIGHTS_DIR / "spurious"
AWNING_REFS_DIR = PACKAGE_DIR / "sample_data" / "biaslab_awning"
