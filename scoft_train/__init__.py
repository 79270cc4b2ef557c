"""scoft_train: the SCoFT engine (self-contrastive fine-tuning of SD 1.x models).

Importing this package is cheap; submodules pull in torch/diffusers on use.
The engine never imports ComfyUI.
"""

__version__ = "0.1.0"
