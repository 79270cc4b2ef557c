"""The one CCUB folder reader: text encodings, formats, subfolders, names, macOS junk,
caption length, crops, the metadata write-back, and one verdict for every stage."""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from scoft_train.ccub_folder import BOM, DatasetError, MetadataFile, with_negatives
from scoft_train.data import load_ccub
from scoft_train.negatives import generate_negatives, generation_size, list_images

CAFE_NFC = unicodedata.normalize("NFC", "Café_Seoul")
CAFE_NFD = unicodedata.normalize("NFD", "Café_Seoul")


def picture(path: Path, size=(32, 32), colour=(120, 60, 30), format=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=format)
    return path


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- text: BOM, CRLF, encodings ----------------------------------------------------------------


def test_bom_and_crlf_captions_and_metadata_are_read_clean(tmp_path):
    sidecar = tmp_path / "sidecar"
    picture(sidecar / "a.png")
    (sidecar / "a.txt").write_bytes(BOM + b"a Korean house\r\nwith a garden\r\n")
    assert load_ccub(sidecar).records[0].text == "a Korean house\nwith a garden"
    listed = tmp_path / "listed"
    picture(listed / "images" / "a.png")
    picture(listed / "images" / "b.png")
    lines = [json.dumps({"file_name": f"images\\{n}.png", "text": f"a Korean house {n}", "blip_text": "a house",
                         "extra": 1}) for n in "ab"]
    (listed / "metadata.jsonl").write_bytes(BOM + "\r\n".join(lines).encode() + b"\r\n")
    dataset = load_ccub(listed)
    assert [r.text for r in dataset.records] == ["a Korean house a", "a Korean house b"]
    assert [r.line for r in dataset.records] == [1, 2]


def test_metadata_write_back_keeps_bom_crlf_and_a_backup(tmp_path):
    picture(tmp_path / "images" / "a.png")
    original = BOM + b'{"file_name": "images/a.png", "text": "a house"}\r\n{"file_name": "images/a.png", "x": 1}\r\n'
    (tmp_path / "metadata.jsonl").write_bytes(original)
    metadata = MetadataFile(tmp_path)
    assert metadata.list_negatives(1, ["negatives/a_neg0.png"])
    assert not metadata.list_negatives(1, ["negatives/a_neg0.png"])
    metadata.save()
    written = (tmp_path / "metadata.jsonl").read_bytes()
    assert written.startswith(BOM) and written.count(b"\r\n") == 2
    assert json.loads(written.removeprefix(BOM).split(b"\r\n")[0])["negative_imgpath"] == ["negatives/a_neg0.png"]
    assert written.split(b"\r\n")[1] == b'{"file_name": "images/a.png", "x": 1}', "untouched lines keep their bytes"
    assert (tmp_path / "metadata.jsonl.bak").read_bytes() == original


def _non_utf8_caption(root: Path) -> None:
    picture(root / "a.png")
    (root / "a.txt").write_bytes("a caf\xe9 in Seoul".encode("latin-1"))


def _non_utf8_metadata(root: Path) -> None:
    picture(root / "images" / "a.png")
    (root / "metadata.jsonl").write_bytes(b'{"file_name": "images/a.png", "text": "caf\xe9"}\n')


def _bomb(root: Path) -> None:
    picture(root / "a.png", size=(64, 64))
    (root / "a.txt").write_text("a house")


def _heic(root: Path) -> None:
    picture(root / "a.png")
    (root / "a.txt").write_text("a house")
    (root / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "IMG_0001.txt").write_text("a Korean palace")


VERDICTS = {
    "non-UTF-8 caption": (_non_utf8_caption, "a.txt: caption is not UTF-8 text (byte 0xe9 at offset 5); save it as UTF-8"),
    "non-UTF-8 metadata": (_non_utf8_metadata, "metadata.jsonl line 1: not UTF-8 text (byte 0xe9 at column 43)"),
    "decompression bomb": (_bomb, "a.png: image 'a.png' has too many pixels to decode safely"),
    "HEIC": (_heic, "IMG_0001.HEIC: is HEIC (iPhone photos), which this installation of Pillow cannot decode"),
}


@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_train_and_negatives_give_the_same_named_verdict(tmp_path, monkeypatch, case):
    build, expected = VERDICTS[case]
    root = tmp_path / "ccub"
    root.mkdir()
    build(root)
    if case == "decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    before = snapshot(root)
    verdicts = []
    for stage in (load_ccub, list_images, lambda folder: generate_negatives(None, None, folder, None)):
        with pytest.raises(DatasetError) as caught:
            stage(root)
        verdicts.append(str(caught.value))
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert expected in verdicts[0], verdicts[0]
    assert snapshot(root) == before


# --- formats, subfolders, unused captions -------------------------------------------------------


def test_every_pillow_format_and_kohya_subfolders_are_read(tmp_path, caplog):
    for name, fmt in [("a.png", "PNG"), ("b.GIF", "GIF"), ("c.tiff", "TIFF"), ("d.bmp", "BMP"),
                      ("e.avif", "AVIF"), ("f.webp", "WEBP"), ("10_hanok/g.JPG", "JPEG")]:
        picture(tmp_path / name, format=fmt)
        (tmp_path / name).with_suffix(".txt").write_text(f"a hanok {name}")
    (tmp_path / "lonely.txt").write_text("a caption without a picture")
    (tmp_path / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    (tmp_path / "clip.txt").write_text("a dance")
    with caplog.at_level(logging.INFO):
        dataset = load_ccub(tmp_path, resolution=16)
    assert [r.relpath for r in dataset.records] == [
        "10_hanok/g.JPG", "a.png", "b.GIF", "c.tiff", "d.bmp", "e.avif", "f.webp"]
    assert dataset.records[0].source == "10_hanok/g.txt"
    assert all(dataset[i]["pixel_values"].shape == (3, 16, 16) for i in range(len(dataset)))
    assert dataset.notes == (
        "clip.txt: captions clip.mp4, which is not an image format this reader decodes; not used",
        "lonely.txt: no image named lonely.* beside it; caption not used",
    )
    assert any("10_hanok/: kohya-style repeat count 10 is not applied" in r.getMessage() for r in caplog.records)


def test_same_stem_in_two_subfolders_is_refused(tmp_path):
    for folder in ("10_hanok", "5_palace"):
        picture(tmp_path / folder / "roof.png")
        (tmp_path / folder / "roof.txt").write_text("a roof")
    with pytest.raises(DatasetError) as caught:
        load_ccub(tmp_path)
    assert caught.value.problems == [
        "5_palace/roof.png: same file stem as 10_hanok/roof.png; both would share negatives/roof_neg<k>, rename one"]


def test_unicode_normalisation_of_names_does_not_matter(tmp_path):
    listed = tmp_path / "listed"
    picture(listed / "images" / f"{CAFE_NFD}.png")
    (listed / "metadata.jsonl").write_text(
        json.dumps({"file_name": f"images/{CAFE_NFC}.png", "text": "a café in Seoul"}, ensure_ascii=False) + "\n")
    record = load_ccub(listed).records[0]
    assert record.image.name == f"{CAFE_NFD}.png" and record.image.is_file()
    sidecar = tmp_path / "sidecar"
    picture(sidecar / f"{CAFE_NFD}.png")
    (sidecar / f"{CAFE_NFC}.txt").write_text("a café in Seoul")
    assert load_ccub(sidecar).records[0].text == "a café in Seoul"


def test_macos_junk_is_ignored(tmp_path):
    picture(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a house")
    picture(tmp_path / "negatives" / "a_neg0.png")
    for junk in ("._a.png", "._a.txt", ".DS_Store", "negatives/._a_neg0.png", "negatives/.DS_Store"):
        (tmp_path / junk).write_bytes(b"\0\5\x16\7AppleDouble")
    (tmp_path / ".fseventsd").mkdir()
    (tmp_path / ".fseventsd" / "x.png").write_bytes(b"junk")
    dataset = load_ccub(tmp_path)
    assert [r.relpath for r in dataset.records] == ["a.png"] and dataset.notes == ()
    assert dataset.records[0].negatives == (tmp_path / "negatives" / "a_neg0.png",)
    assert [item.relpath for item in list_images(tmp_path)] == ["a.png"]


# --- shapes: crops and generation size ----------------------------------------------------------


def test_panorama_gets_a_crop_note_and_a_capped_negative_size(tmp_path):
    picture(tmp_path / "pano.png", size=(2000, 20))
    (tmp_path / "pano.txt").write_text("a skyline")
    picture(tmp_path / "photo.png", size=(48, 32))
    (tmp_path / "photo.txt").write_text("a house")
    dataset = load_ccub(tmp_path, resolution=16)
    assert dataset.notes == ((
        "pano.png: image 'pano.png' is 2000x20; training's square crop keeps 1% of it (a 20 px square). "
        "Crop or split it if the rest matters"
    ),)
    width, height = generation_size((2000, 20), 32, 8)
    assert width * height <= 2 * 32 * 32 and height == 8 and width == 256
    assert generation_size((2000, 20), 512, 8)[0] * generation_size((2000, 20), 512, 8)[1] <= 2 * 512 * 512
    assert generation_size((48, 32), 32, 8) == (48, 32), "ordinary photos keep short side = resolution"
    assert generation_size((640, 480), 512, 8) == (680, 512)


# --- caption length -----------------------------------------------------------------------------


def test_long_captions_are_reported_and_strict_refuses_them(tmp_path):
    picture(tmp_path / "images" / "a.png")
    picture(tmp_path / "images" / "b.png")
    generic = "a photo of a wooden house with a tiled roof " * 9
    entries = [
        {"file_name": "images/a.png", "text": generic + "in Korea", "blip_text": generic},
        {"file_name": "images/b.png", "text": "a Korean house", "blip_text": "a house"},
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    dataset = load_ccub(tmp_path)
    text_note = [n for n in dataset.notes if "field 'text'" in n]
    assert len(text_note) == 1 and text_note[0].startswith("metadata.jsonl line 1: field 'text' is 103 CLIP tokens")
    assert "(77/103 kept)" in text_note[0] and "cut there it equals 'blip_text'" in text_note[0]
    assert any(n.startswith("metadata.jsonl line 1: field 'blip_text' is 101 CLIP tokens") for n in dataset.notes)
    with pytest.raises(DatasetError) as caught:
        load_ccub(tmp_path, strict_captions=True)
    assert len(caught.value.problems) == 2 and "refused: strict captions" in caught.value.problems[0]


# --- negatives from the records -------------------------------------------------------------------


def test_new_negatives_are_listed_as_a_reread_lists_them(tmp_path):
    picture(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a house")
    picture(tmp_path / "negatives" / "a_neg1.png")
    record = load_ccub(tmp_path).records[0]
    picture(tmp_path / "negatives" / "a_neg0.png")
    updated = with_negatives(record, [tmp_path / "negatives" / "a_neg0.png", tmp_path / "negatives" / "a_neg1.png"])
    assert updated == load_ccub(tmp_path).records[0]
    assert updated.negatives == (tmp_path / "negatives/a_neg0.png", tmp_path / "negatives/a_neg1.png")


def test_missing_listed_negative_is_refused_for_training_but_kept_for_negatives(tmp_path):
    picture(tmp_path / "images" / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps(
        {"file_name": "images/a.png", "text": "a house", "negative_imgpath": ["negatives/a_neg0.png"]}) + "\n")
    with pytest.raises(DatasetError, match="negative_imgpath\\[0\\] 'negatives/a_neg0.png' not found"):
        load_ccub(tmp_path)
    record = load_ccub(tmp_path, missing_negatives_ok=True).records[0]
    assert record.negatives == (tmp_path / "negatives" / "a_neg0.png",)
    assert not os.path.exists(record.negatives[0])


def test_depth_field_must_stay_inside_the_folder(tmp_path):
    picture(tmp_path / "images" / "a.png")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "images/a.png", "text": "a house", "depth": "../elsewhere.png"}) + "\n")
    with pytest.raises(DatasetError) as caught:
        load_ccub(tmp_path)
    assert caught.value.problems == [
        "metadata.jsonl line 1: field 'depth' '../elsewhere.png' escapes the dataset folder through '..'"]
