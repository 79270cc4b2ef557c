"""Model loading, all offline: the embedded default, a diffusers folder, a single file.

Single files go through diffusers' `from_single_file` against the configs shipped in
`configs/sd15` and `configs/sd21` (the public runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-2-1 values, minus safety checker and feature extractor),
with the tokenizer and training scheduler passed in, so nothing is looked up on the hub.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .ldm_layout import checkpoint_shapes, detect_sd_version, refuse_other_families, require_parts
from .tiny import build_tiny_components

CONFIG_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = CONFIG_DIR / "clip_tokenizer"
DEFAULT_MODEL = "default"
TINY_MODEL = "tiny"


@dataclass
class ModelBundle:
    """The frozen parts of an SD 1.x-family model plus where they came from.

    `scheduler` is the training (DDPM) noise schedule; samplers build their own from
    its config. `fingerprint` identifies the weights (recorded in LoRA metadata).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin
    source: str
    fingerprint: str
    extras: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image side in pixels (UNet sample size x VAE factor)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def pipeline(self) -> StableDiffusionPipeline:
        """A StableDiffusionPipeline sharing these modules (no copy, no safety checker)."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def load_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The CLIP BPE tokenizer (49408 tokens, 77 positions) from the files shipped here.

    SD 1.x pads with end-of-text (the default); SD 2.x (OpenCLIP) pads with "!".
    """
    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )


def load_default_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ModelBundle:
    """The embedded default: the bias-lab world model shipped in scoft_train/weights/biaslab/world
    (SD-1.x architecture, 32 px, trained on a deliberately biased corpus; see its model card)."""
    from .assets import WORLD_DIR

    if not (WORLD_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded default model is missing from {WORLD_DIR}; reinstall the package or rebuild it with "
            f"`python -m scoft_train biaslab pretrain --out {WORLD_DIR.parent}`"
        )
    bundle = _load_diffusers_folder(WORLD_DIR, dtype)
    bundle.source = DEFAULT_MODEL
    bundle.extras = {"layout": "default", "config": "biaslab world"}
    _freeze(bundle, dtype, device)
    return bundle


def load_tiny_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ModelBundle:
    """A randomly initialised tiny SD-1.x model (see `tiny.py`, 64 px) for tests and benchmarks."""
    bundle = ModelBundle(
        tokenizer=load_clip_tokenizer(),
        source=TINY_MODEL,
        fingerprint=hashlib.sha256(b"scoft-tiny-seed-0").hexdigest()[:16],
        extras={"layout": "tiny", "config": "tiny"},
        **build_tiny_components(seed=0),
    )
    _freeze(bundle, dtype, device)
    return bundle


BUNDLED_CONFIGS = {"sd15": CONFIG_DIR / "sd15", "sd21": CONFIG_DIR / "sd21"}
# SD 2.x was trained with OpenCLIP's tokenizer, which pads with "!" rather than end-of-text.
_PAD_TOKENS = {"sd15": "<|endoftext|>", "sd21": "!"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_FOLDER_PARTS = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "scheduler": ("scheduler_config.json",),
}
PARTS = ("unet", "vae", "text_encoder")
_SAMPLE_BYTES = 1 << 20
_STRIDE_BYTES = 1 << 16
_STRIDE_SAMPLES = 16


def load_model(
    source: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: str | os.PathLike | None = None,
    prediction_type: str | None = None,
) -> ModelBundle:
    """Load an SD 1.x/2.x model offline: "default" (the embedded bias-lab world model),
    "tiny" (a random tiny model for tests), a diffusers
    folder (has model_index.json) or a single-file checkpoint (.safetensors; .ckpt/.pt
    only if they hold nothing but tensors).

    `config` applies to single files: "sd15", "sd21" (configs shipped in
    `scoft_train/configs/`) or a local diffusers folder; None picks sd15/sd21 from the
    checkpoint's cross-attention width. `prediction_type` overrides the scheduler's
    ("epsilon" | "v_prediction" | "sample"), e.g. for an SD 2.x 512-px epsilon model.
    Modules come back frozen, in eval mode, on `device` in `dtype`.
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    path = Path(source).expanduser()
    if config is not None and (str(source) in (DEFAULT_MODEL, TINY_MODEL) or path.is_dir()):
        raise ValueError(f"config={config!r} applies to single-file checkpoints only, not to {str(source)!r}")
    if str(source) == DEFAULT_MODEL:
        bundle = load_default_model(dtype=dtype, device=device)
    elif str(source) == TINY_MODEL:
        bundle = load_tiny_model(dtype=dtype, device=device)
    elif path.is_dir():
        bundle = _load_diffusers_folder(path, dtype)
    elif path.is_file():
        bundle = _load_single_file(path, dtype, config)
    else:
        raise FileNotFoundError(
            f"model not found: {path} does not exist. Pass a single-file SD 1.x/2.x checkpoint "
            f"({', '.join(SINGLE_FILE_SUFFIXES)}), a diffusers folder with model_index.json, "
            f"or {DEFAULT_MODEL!r} for the embedded default model."
        )
    if prediction_type is not None:
        bundle.scheduler = DDPMScheduler.from_config(bundle.scheduler.config, prediction_type=prediction_type)
    _freeze(bundle, dtype, device)
    return bundle


def _freeze(bundle: ModelBundle, dtype: torch.dtype, device: str | torch.device) -> None:
    """Check every weight was loaded, then requires_grad False, eval(), to device/dtype."""
    for name in PARTS:
        module = getattr(bundle, name)
        empty = [key for key, tensor in module.state_dict().items() if tensor.is_meta]
        if empty:
            raise ValueError(
                f"{bundle.source}: the checkpoint holds no weights for {len(empty)} {name} tensors, "
                f"e.g. {empty[:3]}; it does not match the config {bundle.extras.get('config')!r}"
            )
        module.requires_grad_(False).eval().to(device)
        if module.dtype != dtype:  # diffusers warns on every dtype cast, so cast only when needed
            module.to(dtype)


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {what}")


def _load_diffusers_folder(path: Path, dtype: torch.dtype) -> ModelBundle:
    _require(
        path / "model_index.json",
        "a diffusers model folder has model_index.json at its top; for a single file pass the file itself",
    )
    for part, files in _FOLDER_PARTS.items():
        for name in files:
            _require(
                path / part / name,
                f"the diffusers folder {path} needs {part}/{name} "
                "(weights as .safetensors, e.g. from save_pretrained(..., safe_serialization=True))",
            )
    weight_files = sorted(file for part in PARTS for file in (path / part).glob("*.safetensors"))
    local = dict(local_files_only=True, use_safetensors=True)
    tokenizer_dir = path / "tokenizer"
    return ModelBundle(
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **local),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **local),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **local),
        tokenizer=(
            CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
            if tokenizer_dir.is_dir()
            else load_clip_tokenizer()
        ),
        scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True),
        source=str(path),
        fingerprint=weights_fingerprint(weight_files, root=path),
        extras={"layout": "diffusers", "config": str(path)},
    )


def _load_single_file(path: Path, dtype: torch.dtype, config: str | os.PathLike | None) -> ModelBundle:
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; expected one of {SINGLE_FILE_SUFFIXES}"
        )
    shapes = checkpoint_shapes(path)
    refuse_other_families(shapes, path)
    require_parts(shapes, path)
    config_name = detect_sd_version(shapes, path) if config is None else str(config)
    config_dir = _config_dir(config_name)
    tokenizer_dir = config_dir / "tokenizer"
    tokenizer = (
        CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
        if tokenizer_dir.is_dir()
        else load_clip_tokenizer(pad_token=_PAD_TOKENS.get(config_name, "<|endoftext|>"))
    )
    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(config_dir),
        local_files_only=True,
        torch_dtype=dtype,
        tokenizer=tokenizer,
        scheduler=DDPMScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True),
        safety_checker=None,
        feature_extractor=None,
    )
    return ModelBundle(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=pipe.scheduler,
        source=str(path),
        fingerprint=weights_fingerprint([path]),
        extras={"layout": "single_file", "config": config_name},
    )


def _config_dir(config: str) -> Path:
    if config in BUNDLED_CONFIGS:
        return BUNDLED_CONFIGS[config]
    folder = Path(config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"config {config!r} is neither a bundled config ({', '.join(BUNDLED_CONFIGS)}) nor a diffusers "
            f"folder: {folder / 'model_index.json'} does not exist. Pass 'sd15', 'sd21' or a folder with "
            "model_index.json and unet/, vae/, text_encoder/, scheduler/ configs."
        )
    return folder


def weights_fingerprint(files: list[Path], root: Path | None = None) -> str:
    """16 hex chars of sha256 over each weight file's name (relative to `root`; empty for a
    single file, so renaming it keeps the id), size, first and last MiB, and 16 evenly
    spaced 64 KiB samples in between: about 3 MiB read per file, whatever its size.

    The first MiB of a .safetensors holds its header (every key, shape, dtype, offset) and
    the first tensors, the tail the last ones, the samples the rest; a fine-tune changes
    nearly all of them. mtime is left out on purpose: copying a file must not change it.
    """
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        name = file.relative_to(root).as_posix() if root is not None else ""
        digest.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            for offset, length in _sample_spans(size):
                handle.seek(offset)
                digest.update(handle.read(length))
    return digest.hexdigest()[:16]


def _sample_spans(size: int) -> list[tuple[int, int]]:
    """(offset, length) byte spans to hash: the whole file when small, else head, tail and strides."""
    if size <= 4 * _SAMPLE_BYTES:
        return [(0, size)]
    stride = (size - 2 * _SAMPLE_BYTES) // (_STRIDE_SAMPLES + 1)
    middle = [(_SAMPLE_BYTES + stride * (i + 1), _STRIDE_BYTES) for i in range(_STRIDE_SAMPLES)]
    return [(0, _SAMPLE_BYTES), *middle, (size - _SAMPLE_BYTES, _SAMPLE_BYTES)]
