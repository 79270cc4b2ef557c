"""The SCoFT node suite: one table generates ComfyUI's two mappings.

Modules by pipeline stage: models (load model), data (load CCUB), negatives, train, lora (save/load
LoRA files), sampling (sampler, comparison grid), rscorrector (RS-Corrector), sfsl (spurious-feature
fine-tuning); common holds the shared types.
"""

from .data import LoadCCUBDataset
from .lora import LoadSCoFTLoRA, SaveSCoFTLoRA
from .models import LoadSCoFTModel
from .negatives import GenerateSCoFTNegatives
from .rscorrector import RSCorrectorFit, RSCorrectorSampler
from .sampling import SCoFTCompareGrid, SCoFTLoRACompareGrid, SCoFTSampler
from .sfsl import SFSLTrain, SFSLTrainLoRA, SFSLTrainSettings
from .train import SCoFTTrain, SCoFTTrainLoRA, SCoFTTrainSettings

# (node id, display name, class). SCoFTTrain and SCoFTSFSLTrain are the full training nodes of older
# workflows (every setting a widget), deprecated for the short nodes with their Advanced Settings.
NODES = (
    ("SCoFTLoadModel", "Load SCoFT Model", LoadSCoFTModel),
    ("SCoFTLoadCCUBDataset", "Load CCUB Dataset", LoadCCUBDataset),
    ("SCoFTGenerateNegatives", "Generate SCoFT Negatives", GenerateSCoFTNegatives),
    ("SCoFTTrainLoRA", "SCoFT Train", SCoFTTrainLoRA),
    ("SCoFTTrainSettings", "SCoFT Advanced Settings", SCoFTTrainSettings),
    ("SCoFTSaveLoRA", "Save SCoFT LoRA", SaveSCoFTLoRA),
    ("SCoFTLoadLoRA", "Load SCoFT LoRA", LoadSCoFTLoRA),
    ("SCoFTSampler", "SCoFT Sampler", SCoFTSampler),
    ("SCoFTCompareGrid", "SCoFT Compare Grid", SCoFTCompareGrid),
    ("SCoFTLoRACompareGrid", "SCoFT LoRA Compare Grid", SCoFTLoRACompareGrid),
    ("SCoFTRSCorrectorFit", "RS-Corrector Fit", RSCorrectorFit),
    ("SCoFTRSCorrectorSampler", "RS-Corrector Sampler", RSCorrectorSampler),
    ("SCoFTSFSLTrainLoRA", "SFSL Train", SFSLTrainLoRA),
    ("SCoFTSFSLSettings", "SFSL Advanced Settings", SFSLTrainSettings),
    ("SCoFTTrain", "SCoFT Train (deprecated, all settings)", SCoFTTrain),
    ("SCoFTSFSLTrain", "SFSL Train (deprecated, all settings)", SFSLTrain),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, _, cls in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, name, _ in NODES}
