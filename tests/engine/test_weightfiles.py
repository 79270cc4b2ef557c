"""Model and ControlNet files from elsewhere: damaged ones and control-LoRAs are refused by name."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from scoft_train.controlnet import (
    WHERE_TO_GET,
    build_tiny_controlnet,
    load_controlnet,
    save_controlnet_single_file,
)
from scoft_train.models import load_model
from scoft_train.weightfile import DamagedFileError


def truncated_copy(source, target):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def huge_header(target):
    """A .safetensors whose first 8 bytes claim a 2^62-byte header."""
    target.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    return target


@pytest.fixture(scope="module")
def controlnet_file(tiny_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("controlnet") / "control_tiny_depth.safetensors"
    save_controlnet_single_file(build_tiny_controlnet(tiny_bundle.unet), path)
    return path


def test_a_truncated_model_checkpoint_is_named(tiny_single_file, tmp_path):
    path = truncated_copy(tiny_single_file, tmp_path / "v1-5-pruned.safetensors")
    with pytest.raises(DamagedFileError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"model checkpoint {path} ({path.stat().st_size} bytes) is truncated or corrupt")
    assert message.endswith("it is probably a partial download or copy: download it again")
    assert caught.value.path == path and caught.value.__suppress_context__


def test_a_model_header_claiming_2_to_the_62_bytes_is_named(tmp_path):
    path = huge_header(tmp_path / "odd.safetensors")
    with pytest.raises(DamagedFileError, match=rf"model checkpoint {path} \(10 bytes\) is truncated or corrupt .*"
                                               r"header too large"):
        load_model(path)


def test_a_damaged_controlnet_is_named(controlnet_file, tmp_path):
    path = truncated_copy(controlnet_file, tmp_path / "control_v11f1p_sd15_depth.safetensors")
    with pytest.raises(DamagedFileError, match=rf"^ControlNet {path} \(\d+ bytes\) is truncated or corrupt .*"
                                               "download it again$"):
        load_controlnet(path)
    with pytest.raises(DamagedFileError, match="header too large"):
        load_controlnet(huge_header(tmp_path / "odd.safetensors"))


def control_lora(path, marker_in: str):
    """A small control-LoRA like Stability AI's control-lora-*-rank*.safetensors."""
    tensors = {
        "input_hint_block.0.weight": torch.zeros(4, 3, 3, 3),
        "zero_convs.0.0.weight": torch.zeros(8, 8, 1, 1),
        "input_blocks.1.1.proj_in.down": torch.zeros(2, 8),
        "input_blocks.1.1.proj_in.up": torch.zeros(8, 2),
        "middle_block.1.transformer_blocks.0.attn1.to_q.down": torch.zeros(2, 8),
        "middle_block.1.transformer_blocks.0.attn1.to_q.up": torch.zeros(8, 2),
    }
    if marker_in == "tensors":
        tensors["lora_controlnet"] = torch.tensor([])
    save_file(tensors, str(path), metadata={"lora_controlnet": "true"} if marker_in == "header" else None)
    return path


@pytest.mark.parametrize("marker_in", ["tensors", "header"])
def test_a_control_lora_is_refused_for_what_it_is(tmp_path, marker_in):
    path = control_lora(tmp_path / "control-lora-depth-rank128.safetensors", marker_in)
    with pytest.raises(ValueError) as caught:
        load_controlnet(path)
    assert str(caught.value) == (
        f"{path} is a control-LoRA (2 low-rank .up/.down weight pairs, a 'lora_controlnet' entry), not a full "
        "ControlNet: it stores only low-rank changes to a base model's UNet and cannot be used as the depth "
        f"ControlNet. A full SD 1.x depth ControlNet is needed: {WHERE_TO_GET}"
    )
