"""The one image loader: EXIF orientation, colour profiles, transparency, 16-bit, formats,
and every stage that reads an image going through it."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoft_train.data import load_ccub
from scoft_train.depth import depth_image
from scoft_train.imagefile import (
    IMAGE_SUFFIXES,
    ImageFileError,
    load_rgb,
    open_oriented,
    read_rgb,
)
from scoft_train.negatives import CCUBImage, depth_from_dataset, depth_from_estimator
from scoft_train.rscorrector.imagesets import load_image_set
from scoft_train.sfsl.data import load_image_folder
from scoft_train.sfsl.evaluate import load_images

RED, BLUE, GREEN, MAGENTA, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (255, 255, 255)


def rotated_jpeg(path: Path) -> Path:
    """48x32 stored with red left half, blue right half, EXIF Orientation 6 (rotate 90 CW to
    show): a viewer shows it 32x48 with red on top and blue below."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = Image.new("RGB", (48, 32), BLUE)
    stored.paste(RED, (0, 0, 24, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def near(pixel, colour, tolerance=24) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour))


def magenta_rgba(path: Path) -> Path:
    """32x32 RGBA: left half opaque green, right half transparent with magenta beneath."""
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[:, :] = (*MAGENTA, 0)
    pixels[:, :16] = (*GREEN, 255)
    Image.fromarray(pixels).save(path)
    return path


def _icc_display_p3() -> bytes:
    """A v2 matrix/TRC ICC profile with Display P3 primaries (D50-adapted) and gamma 2.2."""

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + struct.pack(">3i", *(round(v * 65536) for v in (x, y, z)))

    text = b"Display P3 (test)\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)),
            (b"gXYZ", xyz(0.2919, 0.6922, 0.0419)), (b"bXYZ", xyz(0.1572, 0.0666, 0.7841)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (struct.pack(">I4sI4s4s4s", start + len(data), b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249))) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def _p3_to_srgb(rgb) -> tuple[int, ...]:
    """Independent reference: P3 (gamma 2.2) -> XYZ D50 -> sRGB (D50-adapted matrix, sRGB curve)."""
    linear = (np.array(rgb) / 255.0) ** 2.2
    p3 = np.array([[0.5151, 0.2919, 0.1572], [0.2412, 0.6922, 0.0666], [-0.0011, 0.0419, 0.7841]])
    srgb = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])
    out = np.linalg.solve(srgb, p3 @ linear).clip(0, 1)
    encoded = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return tuple(int(v) for v in (encoded * 255).round())


# --- the loader -----------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    image = load_rgb(rotated_jpeg(tmp_path / "phone.jpg"))
    assert image.size == (32, 48)
    assert near(image.getpixel((16, 2)), RED) and near(image.getpixel((16, 45)), BLUE)


def test_transparency_is_composited_onto_the_background(tmp_path):
    path = magenta_rgba(tmp_path / "cut_out.png")
    rgb, facts = read_rgb(path)
    assert facts.transparent and rgb.mode == "RGB"
    assert rgb.getpixel((4, 4)) == GREEN and rgb.getpixel((28, 4)) == WHITE
    assert load_rgb(path, background=(0, 0, 0)).getpixel((28, 4)) == (0, 0, 0)
    with Image.open(path) as raw:
        assert raw.convert("RGB").getpixel((28, 4)) == MAGENTA, "what plain convert('RGB') showed"


def test_palette_and_grey_alpha_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([*MAGENTA, *GREEN] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    palette.save(tmp_path / "palette.png", transparency=0)
    grey = Image.new("LA", (8, 8), (40, 0))
    grey.save(tmp_path / "grey.png")
    rgb, facts = read_rgb(tmp_path / "palette.png")
    assert facts.transparent and rgb.getpixel((1, 1)) == GREEN and rgb.getpixel((6, 1)) == WHITE
    assert load_rgb(tmp_path / "grey.png").getpixel((0, 0)) == WHITE
    opaque = Image.new("RGBA", (8, 8), (*RED, 255))
    opaque.save(tmp_path / "opaque.png")
    rgb, facts = read_rgb(tmp_path / "opaque.png")
    assert not facts.transparent and rgb.getpixel((0, 0)) == RED


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "scan16.png")
    with Image.open(tmp_path / "scan16.png") as raw:
        clipped = raw.convert("RGB").getpixel((1, 0))
    image = load_rgb(tmp_path / "scan16.png")
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0,) * 3, (64,) * 3, (128,) * 3, (255,) * 3]
    assert clipped == (255, 255, 255), "what plain convert('RGB') showed"
    depth = depth_image(open_oriented(tmp_path / "scan16.png"), (4, 4))
    assert [depth.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255], "depth maps keep their stretch"


def test_display_p3_profile_is_converted_to_srgb(tmp_path):
    colour = (200, 120, 60)
    Image.new("RGB", (16, 16), colour).save(tmp_path / "p3.png", icc_profile=_icc_display_p3())
    Image.new("RGB", (16, 16), colour).save(tmp_path / "plain.png")
    converted = load_rgb(tmp_path / "p3.png").getpixel((8, 8))
    expected = _p3_to_srgb(colour)
    assert max(abs(a - b) for a, b in zip(converted, expected)) <= 3, (converted, expected)
    assert max(abs(a - b) for a, b in zip(converted, colour)) >= 10, "P3 numbers are not sRGB numbers"
    assert load_rgb(tmp_path / "plain.png").getpixel((8, 8)) == colour


def test_broken_profile_and_undecodable_formats_are_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "bad_icc.png", icc_profile=b"not a profile at all")
    with pytest.raises(ImageFileError, match=r"bad_icc\.png: its embedded colour profile cannot be applied"):
        load_rgb(tmp_path / "bad_icc.png")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(ImageFileError, match=r"IMG_0001\.HEIC: is HEIC .* convert it to JPEG or PNG"):
        load_rgb(tmp_path / "IMG_0001.HEIC")
    assert {".gif", ".tif", ".tiff", ".bmp", ".avif", ".webp", ".png", ".jpg"} <= set(IMAGE_SUFFIXES)


def test_decompression_bomb_is_a_named_error(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageFileError, match=r"huge\.png: has too many pixels to decode safely"):
        load_rgb(tmp_path / "huge.png")


# --- every stage reads through it ----------------------------------------------------------------


def _rotated_ccub(root: Path) -> Path:
    rotated_jpeg(root / "images" / "phone.jpg")
    rotated_jpeg(root / "images" / "phone_depth.jpg")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "images/phone.jpg", "text": "a house"}) + "\n")
    return root


def test_training_depth_and_estimator_see_the_photo_upright(tmp_path):
    root = _rotated_ccub(tmp_path / "ccub")
    pixels = load_ccub(root, resolution=32)[0]["pixel_values"]
    assert torch.allclose(pixels[:, 1, 16], torch.tensor([1.0, -1.0, -1.0]), atol=0.2)
    assert torch.allclose(pixels[:, -2, 16], torch.tensor([-1.0, -1.0, 1.0]), atol=0.2)
    item = CCUBImage(0, root / "images/phone.jpg", "images/phone.jpg", "a house", depth=root / "images/phone_depth.jpg")
    assert depth_from_dataset()(item).size == (32, 48)
    seen = []
    depth_from_estimator(lambda image: seen.append(image.size) or image)(item)
    assert seen == [(32, 48)]


def test_rscorrector_and_sfsl_folders_read_upright_and_flattened(tmp_path):
    folder = tmp_path / "refs"
    rotated_jpeg(folder / "a.jpg")
    magenta_rgba(folder / "b.png")
    (folder / "._a.jpg").write_bytes(b"AppleDouble junk")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    pixels = load_image_set(folder, 32).pixels
    assert pixels.shape == (2, 3, 32, 32)
    assert torch.allclose(pixels[0, :, 1, 16], torch.tensor([1.0, -1.0, -1.0]), atol=0.2)
    assert torch.equal(pixels[1, :, 4, 28], torch.ones(3)), "transparent -> white"
    sfsl = load_image_folder(folder, "an awning", resolution=32)
    assert torch.equal(sfsl[1]["pixel_values"], pixels[1])
    references = load_images(folder)
    assert references[0].shape == (3, 48, 32) and torch.equal(references[1][:, 4, 28], torch.ones(3))


def test_transparency_is_counted_once_in_the_log(tmp_path, caplog):
    magenta_rgba(tmp_path / "a.png")
    magenta_rgba(tmp_path / "b.png")
    Image.new("RGB", (32, 32), RED).save(tmp_path / "c.png")
    for stem in "abc":
        (tmp_path / f"{stem}.txt").write_text("a house")
    with caplog.at_level(logging.INFO, logger="scoft_train.data"):
        dataset = load_ccub(tmp_path, resolution=32, background=(0, 0, 0))
    lines = [r.getMessage() for r in caplog.records if "transparent" in r.getMessage()]
    assert len(lines) == 1 and "2 of 3 images have transparent areas" in lines[0] and "(0, 0, 0)" in lines[0]
    assert torch.equal(dataset[0]["pixel_values"][:, 4, 28], -torch.ones(3))
