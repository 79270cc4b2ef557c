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
from .sampling import SCoFTCompareGrid, SCoFTSampler
from .sfsl import SFSLTrain
from .train import SCoFTTrain

# (node id, display name, class)
NODES = (
    ("SCoFTLoadModel", "Load SCoFT Model", LoadSCoFTModel),
    ("SCoFTLoadCCUBDataset", "Load CCUB Dataset", LoadCCUBDataset),
    ("SCoFTGenerateNegatives", "Generate SCoFT Negatives", GenerateSCoFTNegatives),
    ("SCoFTTrain", "SCoFT Train", SCoFTTrain),
    ("SCoFTSaveLoRA", "Save SCoFT LoRA", SaveSCoFTLoRA),
    ("SCoFTLoadLoRA", "Load SCoFT LoRA", LoadSCoFTLoRA),
    ("SCoFTSampler", "SCoFT Sampler", SCoFTSampler),
    ("SCoFTCompareGrid", "SCoFT Compare Grid", SCoFTCompareGrid),
    ("SCoFTRSCorrectorFit", "RS-Corrector Fit", RSCorrectorFit),
    ("SCoFTRSCorrectorSampler", "RS-Corrector Sampler", RSCorrectorSampler),
    ("SCoFTSFSLTrain", "SFSL Train", SFSLTrain),
)

NODE_CLASS_MAPPINGS = {node_id: cls for node_id, _, cls in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, name, _ in NODES}
