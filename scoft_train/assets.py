"""Where the shipped assets live: the bias-lab artefacts (world model, its depth
ControlNet, the judge, the label-free encoder, the spurious-feature classifier and oracle) and the lab's sample
data. The core reads its defaults from here; `biaslab pretrain` and `biaslab spurious`
write the artefacts that ship in `WEIGHTS_DIR`.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights" / "biaslab"
WORLD_DIR = WEIGHTS_DIR / "world"
CONTROLNET_DIR = WEIGHTS_DIR / "controlnet"
JUDGE_DIR = WEIGHTS_DIR / "judge"
SSL_DIR = WEIGHTS_DIR / "ssl"  # the label-free encoder (biaslab scorers): a feature space, never a scorer
SPURIOUS_DIR = WEIGHTS_DIR / "spurious"
SPURIOUS_CLASSIFIER_DIR = SPURIOUS_DIR / "classifier"
BIASLAB_CCUB_DIR = PACKAGE_DIR / "sample_data" / "biaslab_ccub"
AWNING_REFS_DIR = PACKAGE_DIR / "sample_data" / "biaslab_awning"
