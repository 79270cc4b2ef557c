"""Reading image files: the one loader every stage uses (training, negatives, depth, previews,
RS-Corrector image sets, SFSL references, bench).

`load_rgb(path)` returns an 8-bit RGB PIL image as a viewer shows the file:
- EXIF orientation applied (a phone photo stored sideways comes out upright);
- 16-bit and 32-bit greyscale (`I;16`, `I`, `F`) scaled to 0..255, not clipped
  (`scale_to_uint8`, shared with the depth path);
- an embedded ICC profile other than sRGB (e.g. Display P3) converted to sRGB
  (perceptual intent); sRGB-tagged and untagged images keep their numbers;
- transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) composited onto
  `background` (white unless told otherwise).

Formats: every format Pillow decodes here (`IMAGE_SUFFIXES`). HEIC/HEIF need a plugin this
environment does not have; such files are refused by name with how to convert them.
Decoding is strict (a truncated file fails, whatever the host set) and Pillow's
decompression-bomb limit is an `ImageFileError` naming the file and its pixel count.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

WHITE = (255, 255, 255)
Background = tuple[int, int, int]

# Pillow formats that only identify a file or need an external program: not images to train on.
_NOT_RASTER = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"}
# Suffixes of photo formats this Pillow cannot decode, with how to convert them.
CONVERT_HINTS = {
    ".heic": "HEIC (iPhone photos)",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _decodable_suffixes() -> tuple[str, ...]:
    Image.init()
    return tuple(sorted(
        suffix for suffix, name in Image.registered_extensions().items()
        if name in Image.OPEN and name not in _NOT_RASTER
    ))


IMAGE_SUFFIXES: tuple[str, ...] = _decodable_suffixes()
UNDECODABLE_SUFFIXES: tuple[str, ...] = tuple(s for s in CONVERT_HINTS if s not in IMAGE_SUFFIXES)


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageFacts:
    """What reading a file found: size (W, H) after orientation, and whether it had
    transparent pixels (composited onto the background)."""

    size: tuple[int, int]
    transparent: bool


def is_image_name(name: str) -> bool:
    """True for a file name with a decodable suffix (any case)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def unsupported_format(path: Path) -> str | None:
    """Why a photo format cannot be read here and how to convert it, or None."""
    suffix = path.suffix.lower()
    if suffix not in UNDECODABLE_SUFFIXES:
        return None
    return (
        f"is {CONVERT_HINTS[suffix]}, which this installation of Pillow cannot decode; convert it to JPEG or PNG "
        f"(macOS Preview: File > Export; Linux: `heif-convert {path.name} {path.stem}.jpg`; "
        f"ImageMagick: `magick {path.name} {path.stem}.png`)"
    )


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Make Pillow raise on truncated images, whatever the host set."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def open_oriented(path: str | Path) -> Image.Image:
    """The decoded image with EXIF orientation applied, in its own mode (for depth maps, which
    keep their range; photos go through `load_rgb`). Raises ImageFileError naming the file."""
    path = Path(path)
    hint = unsupported_format(path)
    if hint is not None:
        raise ImageFileError(f"{path}: {hint}")
    try:
        with strict_pillow(), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                oriented = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise ImageFileError(
            f"{path}: has too many pixels to decode safely ({error}); downscale it (or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageFileError(f"{path}: cannot be decoded as an image ({type(error).__name__}: {error})") from None
    return oriented


def scale_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 array: `low`..`high` mapped linearly to 0..255 (rounded, clipped)."""
    scaled = (array.astype(np.float32) - low) / max(float(high - low), 1e-8)
    return (scaled.clip(0.0, 1.0) * 255).round().astype(np.uint8)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale scaled to L by the range its type can hold (I;16: 0..65535)."""
    array = np.asarray(image)
    if image.mode == "F":
        high = 1.0 if float(array.max(initial=0.0)) <= 1.0 else 65535.0
    elif image.mode == "I":
        high = 255.0 if int(array.max(initial=0)) <= 255 else 65535.0
    else:
        high = 65535.0
    return Image.fromarray(scale_to_uint8(array, 0.0, high))


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    return "srgb" in ImageCms.getProfileDescription(profile).lower().replace(" ", "")


def _to_srgb(image: Image.Image, path: Path) -> Image.Image:
    """`image` converted from its embedded ICC profile to sRGB (RGB or RGBA), if it has one."""
    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if _is_srgb(source):
            return image
        alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
        if image.mode not in ("RGB", "RGBA", "L", "CMYK"):
            image = image.convert("RGBA" if alpha else "RGB")
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode=out_mode,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        raise ImageFileError(
            f"{path}: its embedded colour profile cannot be applied ({error}); re-save it as sRGB"
        ) from None
    converted.info.pop("icc_profile", None)
    return converted


def _flatten(image: Image.Image, background: Background) -> tuple[Image.Image, bool]:
    """(RGB image, had transparent pixels): alpha composited onto `background`."""
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return image.convert("RGB"), False
    rgba = image.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return image.convert("RGB"), False
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB"), True


def read_rgb(path: str | Path, background: Background = WHITE) -> tuple[Image.Image, ImageFacts]:
    """(8-bit RGB image as a viewer shows it, facts); see the module doc for each step.
    Raises ImageFileError naming the file."""
    path = Path(path)
    image = open_oriented(path)
    if image.mode in _SIXTEEN_BIT_MODES:
        icc = image.info.get("icc_profile")
        image = _eight_bit(image)
        if icc:
            image.info["icc_profile"] = icc
    image = _to_srgb(image, path)
    rgb, transparent = _flatten(image, background)
    return rgb, ImageFacts(rgb.size, transparent)


def load_rgb(path: str | Path, background: Background = WHITE) -> Image.Image:
    """8-bit RGB PIL image of `path` (orientation, 16-bit scaling, sRGB, transparency applied)."""
    return read_rgb(path, background)[0]
