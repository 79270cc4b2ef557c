"""Save SCoFT LoRA / Load SCoFT LoRA: SCOFT_LORA <-> ComfyUI's models/loras folder."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .common import SCOFT_LORA, LoraFile, inside, tip

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"


def loras_folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def next_free_name(folder: Path, prefix: str) -> Path:
    """`folder/<prefix>_NNNNN_.safetensors` (core ComfyUI's save naming) with NNNNN one past the highest counter already there."""
    target_dir = (folder / prefix).parent
    stem = Path(prefix).name
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{5}})_{re.escape(SUFFIX)}$")
    taken = [int(m.group(1)) for p in target_dir.glob(f"{stem}_*{SUFFIX}") if (m := pattern.match(p.name))]
    counter = max(taken, default=0) + 1
    return target_dir / f"{stem}_{counter:05d}_{SUFFIX}"


def save_without_overwrite(source: Path, folder: Path, prefix: str) -> Path:
    """Copy `source` to the next free counter name; a hard link from a temp copy makes the final
    name appear complete and never replaces a file that appeared meanwhile."""
    target = next_free_name(folder, prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.copyfile(source, staging)
    try:
        while True:
            try:
                os.link(staging, target)
                return target
            except FileExistsError:
                target = next_free_name(folder, prefix)
    finally:
        staging.unlink(missing_ok=True)


class SaveSCoFTLoRA:
    DESCRIPTION = (
        "Writes the trained LoRA (kohya format) into ComfyUI's models/loras as <prefix>_00001_.safetensors, "
        "counting up and never overwriting, so core Load LoRA and Load SCoFT LoRA list it."
    )
    CATEGORY = "SCoFT/lora"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name relative to models/loras, as LoraLoader lists it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora": (SCOFT_LORA, tip("The LoRA from SCoFT Train (or Load SCoFT LoRA).")),
                "filename_prefix": ("STRING", tip(
                    "File name start inside models/loras; may hold subfolders ('scoft/korea'). "
                    "A 5-digit counter and .safetensors are appended.",
                    default="scoft/scoft_lora",
                )),
            }
        }

    def save(self, lora: LoraFile, filename_prefix: str):
        folder = loras_folder()
        prefix = filename_prefix.strip().strip("/\\")
        if not prefix or not inside(folder, folder / prefix):
            raise ValueError(
                f"filename_prefix {filename_prefix!r} must name a file inside {folder} (no absolute path, no '..')"
            )
        target = save_without_overwrite(lora.path, folder, prefix)
        name = target.relative_to(folder).as_posix()
        logger.info("saved SCoFT LoRA %s (rank %d, alpha %g) from %s", target, lora.rank, lora.alpha, lora.path)
        return {"ui": {"text": [name]}, "result": (name,)}


class LoadSCoFTLoRA:
    DESCRIPTION = "Picks a kohya-format LoRA from ComfyUI's models/loras for SCoFT Sampler (e.g. one saved earlier)."
    CATEGORY = "SCoFT/lora"
    FUNCTION = "load"
    RETURN_TYPES = (SCOFT_LORA,)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The LoRA file with its rank, alpha and training metadata.",)

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {
            "required": {
                "lora_name": (folder_paths.get_filename_list("loras"), tip(
                    "A LoRA file in models/loras (kohya keys lora_unet_*; SCoFT LoRAs carry their training "
                    "settings in the header)."
                )),
            }
        }

    @classmethod
    def IS_CHANGED(cls, lora_name: str):
        import folder_paths

        path = folder_paths.get_full_path("loras", lora_name)
        return f"{path}:{os.path.getmtime(path)}" if path else lora_name

    def load(self, lora_name: str):
        import folder_paths

        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise FileNotFoundError(
                f"lora_name {lora_name!r} is not in {folder_paths.get_folder_paths('loras')}; refresh the page "
                "after adding the file, or pick another"
            )
        return (LoraFile.from_file(path),)
