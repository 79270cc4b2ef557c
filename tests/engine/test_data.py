"""CCUB dataset: loading both layouts, tensors, generic captions, validation, transforms."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from scoft_train.data import (
    DEFAULT_CULTURE_TERMS,
    CCUBRecord,
    DatasetError,
    generic_caption,
    load_ccub,
)
from scoft_train.sample_data import CCUB_DEMO_DIR


def _noise_png_bytes(size=(32, 32), seed=0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _halves(path: Path, size=(32, 32), left=(255, 0, 0), right=(0, 0, 255)) -> Path:
    """An image whose left half and right half differ, so a flip is visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    image.save(path)
    return path


def _write_metadata(root: Path, entries: list) -> None:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def _valid_folder(root: Path) -> Path:
    """Two valid entries: a.png (one negative) and b.png (none)."""
    _halves(root / "images" / "a.png")
    _halves(root / "images" / "b.png", left=(0, 255, 0))
    _halves(root / "negatives" / "a_neg0.png", left=(90, 60, 30))
    return root


def _entry(name: str, **fields) -> dict:
    return {"file_name": f"images/{name}", "text": f"a Korean house {name}", "blip_text": "a house", **fields}


def _snapshot(root: Path) -> dict:
    """Every path under root (and root itself): kind, bytes or link target, mtime_ns."""
    state = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = os.lstat(path)
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = None
        state[path.relative_to(root).as_posix()] = (content, info.st_mtime_ns, info.st_size)
    return state


# --- the shipped sample folder ------------------------------------------------------


def test_sample_folder_loads_with_shapes_and_ranges():
    dataset = load_ccub(CCUB_DEMO_DIR)
    assert len(dataset) == 8
    assert dataset.root == CCUB_DEMO_DIR
    metadata = [json.loads(line) for line in (CCUB_DEMO_DIR / "metadata.jsonl").read_text().splitlines()]
    for index, entry in enumerate(metadata):
        item = dataset[index]
        assert item["pixel_values"].shape == (3, 64, 64)
        assert item["pixel_values"].dtype == torch.float32
        assert item["negatives"].shape == (1, 3, 64, 64)
        for tensor in (item["pixel_values"], item["negatives"]):
            assert tensor.min() >= -1.0 and tensor.max() <= 1.0
            assert tensor.max() - tensor.min() > 0.5, "a scene, not a flat colour"
        assert item["text"] == entry["text"] and item["generic_text"] == entry["blip_text"]
        assert item["index"] == index
        assert not torch.equal(item["pixel_values"], item["negatives"][0])
    record = dataset.records[2]
    assert isinstance(record, CCUBRecord)
    assert record.source == "metadata.jsonl line 3"
    assert record.image == CCUB_DEMO_DIR / metadata[2]["file_name"]
    assert dataset.summary() == dict(
        images=8, captions=8, generic_captions_derived=0, negatives=8, fingerprint=dataset.fingerprint
    )
    total = sum(p.stat().st_size for p in CCUB_DEMO_DIR.rglob("*") if p.is_file())
    assert total < 100_000


def test_fingerprint_is_stable_and_tracks_captions(tmp_path):
    copy = shutil.copytree(CCUB_DEMO_DIR, tmp_path / "ccub")
    first = load_ccub(copy).fingerprint
    assert first == load_ccub(copy).fingerprint == load_ccub(CCUB_DEMO_DIR).fingerprint
    assert len(first) == 16 and int(first, 16) >= 0
    metadata = copy / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace("bibimbap", "japchae"))
    assert load_ccub(copy).fingerprint != first


def test_resize_shorter_side_then_center_crop(tmp_path):
    _halves(tmp_path / "images" / "wide.png", size=(64, 32))
    _write_metadata(tmp_path, [_entry("wide.png")])
    item = load_ccub(tmp_path, resolution=16)[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    assert item["negatives"].shape == (0, 3, 16, 16)
    # center crop of a red|blue image: the left half of the crop is red, the right blue
    assert torch.allclose(item["pixel_values"][:, :, 0], torch.tensor([1.0, -1.0, -1.0])[:, None].expand(3, 16))
    assert torch.allclose(item["pixel_values"][:, :, -1], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, 16))


# --- generic captions -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a house in Korea", "a house"),
        ("an Indian woman cooking", "a woman cooking"),
        ("A Korean woman in a hanbok", "A woman in a hanbok"),
        ("a woman looking at the korean traditional palace", "a woman looking at the traditional palace"),
        ("Korean and Chinese dumplings on a plate", "dumplings on a plate"),
        ("a bowl of Mexican food.", "a bowl of food."),
        ("the Great Wall of China, at dusk", "the Great Wall, at dusk"),
        ("Nigerians dancing in a street", "dancing in a street"),
        ("a house in Korea with a garden", "a house with a garden"),
        ("a cat on a mat  ", "a cat on a mat"),
    ],
)
def test_generic_caption_removes_culture_terms(text, expected):
    assert generic_caption(text, DEFAULT_CULTURE_TERMS) == expected


def test_generic_caption_uses_the_given_terms_as_whole_words():
    assert generic_caption("an Elvish elven tower", ["elvish"]) == "an elven tower"
    assert generic_caption("a Korean house", []) == "a Korean house"


def test_missing_blip_text_is_derived_with_one_log_line(tmp_path, caplog):
    _valid_folder(tmp_path)
    _halves(tmp_path / "images" / "c.png")
    _write_metadata(
        tmp_path,
        [
            {"file_name": "images/a.png", "text": "a house in Korea", "negative_imgpath": ["negatives/a_neg0.png"]},
            {"file_name": "images/b.png", "text": "a Mexican meal", "blip_text": "a meal on a table"},
            {"file_name": "images/c.png", "text": "an Indian temple", "blip_text": None},
        ],
    )
    with caplog.at_level(logging.INFO, logger="scoft_train.data"):
        dataset = load_ccub(tmp_path)
    assert [r.generic_text for r in dataset.records] == ["a house", "a meal on a table", "a temple"]
    derived = [r for r in caplog.records if "derived" in r.getMessage()]
    assert len(derived) == 1 and derived[0].levelno == logging.INFO
    assert "derived 2 of 3" in derived[0].getMessage()
    assert dataset.summary()["generic_captions_derived"] == 2


# --- layout B: sidecar captions -------------------------------------------------------


def test_layout_b_with_sidecars_and_negatives(tmp_path, caplog):
    _halves(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a Korean house in Korea\n")
    _halves(tmp_path / "b.jpg", size=(48, 32))
    (tmp_path / "b.txt").write_text("Chinese dumplings")
    _halves(tmp_path / "negatives" / "a_neg1.png", left=(0, 0, 0))
    _halves(tmp_path / "negatives" / "a_neg0.png", left=(255, 255, 255))
    _halves(tmp_path / "negatives" / "b_neg0.png", size=(96, 64))
    with caplog.at_level(logging.INFO, logger="scoft_train.data"):
        dataset = load_ccub(tmp_path, resolution=32)
    assert [r.source for r in dataset.records] == ["a.txt", "b.txt"]
    assert [r.text for r in dataset.records] == ["a Korean house in Korea", "Chinese dumplings"]
    assert [r.generic_text for r in dataset.records] == ["a house", "dumplings"]
    assert dataset.records[0].negatives == (tmp_path / "negatives/a_neg0.png", tmp_path / "negatives/a_neg1.png")
    assert dataset[0]["negatives"].shape == (2, 3, 32, 32)
    assert dataset[0]["negatives"][0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert dataset[1]["negatives"].shape == (1, 3, 32, 32), "a larger negative is resized to the positive"
    assert dataset.summary()["negatives"] == 3
    assert sum("derived 2 of 2" in r.getMessage() for r in caplog.records) == 1


def test_layout_b_missing_sidecar_and_empty_caption(tmp_path):
    _halves(tmp_path / "a.png")
    _halves(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("   \n")
    with pytest.raises(DatasetError) as caught:
        load_ccub(tmp_path)
    assert caught.value.problems == ["a.png: no caption file a.txt beside it", "b.txt: caption is empty"]


# --- validation -------------------------------------------------------------------------


def _missing_image(root):
    _write_metadata(root, [_entry("a.png"), _entry("nope.png")])


def _garbage_image(root):
    (root / "images" / "b.png").write_bytes(b"this is not an image at all")
    _write_metadata(root, [_entry("a.png"), _entry("b.png")])


def _truncated_png(root):
    data = _noise_png_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])
    _write_metadata(root, [_entry("a.png"), _entry("b.png")])


def _truncated_jpeg(root):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_noise_png_bytes())).save(buffer, format="JPEG", quality=95)
    (root / "images" / "b.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _write_metadata(root, [_entry("a.png"), _entry("b.jpg")])


def _bad_json(root):
    _write_metadata(root, [_entry("a.png"), '{"file_name": "images/b.png", "text": '])


def _not_an_object(root):
    _write_metadata(root, [_entry("a.png"), '["images/b.png", "a caption"]'])


def _missing_caption(root):
    _write_metadata(root, [_entry("a.png"), {"file_name": "images/b.png"}])


def _null_caption(root):
    _write_metadata(root, [_entry("a.png"), _entry("b.png", text=None)])


def _non_string_caption(root):
    _write_metadata(root, [_entry("a.png"), _entry("b.png", text=["a", "house"])])


def _dotdot_escape(root):
    _halves(root.parent / "outside.png")
    _write_metadata(root, [_entry("a.png"), _entry("b.png", negative_imgpath=["negatives/../../outside.png"])])


def _absolute_path(root):
    _write_metadata(root, [_entry("a.png"), _entry("b.png", negative_imgpath=[str(root / "negatives/a_neg0.png")])])


def _symlinked_negative(root):
    (root / "negatives" / "b_neg0.png").symlink_to(root / "images" / "a.png")
    _write_metadata(root, [_entry("a.png"), _entry("b.png", negative_imgpath=["negatives/b_neg0.png"])])


def _symlinked_image(root):
    (root / "images" / "c.png").symlink_to(root / "images" / "a.png")
    _write_metadata(root, [_entry("a.png"), _entry("c.png")])


def _duplicate(root):
    _write_metadata(root, [_entry("a.png"), _entry("b.png"), _entry("a.png", text="again")])


def _negatives_not_a_list(root):
    _write_metadata(root, [_entry("a.png"), _entry("b.png", negative_imgpath="negatives/a_neg0.png")])


def _empty(root):
    (root / "metadata.jsonl").write_text("\n\n")


BAD_CASES = {
    "missing image": (_missing_image, ["metadata.jsonl line 2", "'images/nope.png' not found at"]),
    "garbage image": (_garbage_image, ["metadata.jsonl line 2", "'images/b.png'", "cannot be decoded"]),
    "truncated png": (_truncated_png, ["metadata.jsonl line 2", "'images/b.png'", "cannot be decoded"]),
    "truncated jpeg": (_truncated_jpeg, ["metadata.jsonl line 2", "'images/b.jpg'", "cannot be decoded"]),
    "bad json": (_bad_json, ["metadata.jsonl line 2", "not valid JSON"]),
    "not an object": (_not_an_object, ["metadata.jsonl line 2", "expected a JSON object, got list"]),
    "missing caption": (_missing_caption, ["metadata.jsonl line 2: field 'text' must be a string, got null"]),
    "null caption": (_null_caption, ["metadata.jsonl line 2: field 'text' must be a string, got null"]),
    "non-string caption": (_non_string_caption, ["metadata.jsonl line 2: field 'text' must be a string, got list"]),
    "dotdot escape": (_dotdot_escape, ["metadata.jsonl line 2", "negative_imgpath[0]", "escapes the dataset folder"]),
    "absolute path": (_absolute_path, ["metadata.jsonl line 2", "negative_imgpath[0]", "absolute path"]),
    "symlinked negative": (_symlinked_negative, ["metadata.jsonl line 2", "'negatives/b_neg0.png'", "symlink"]),
    "symlinked image": (_symlinked_image, ["metadata.jsonl line 2", "'images/c.png'", "symlink"]),
    "duplicate": (_duplicate, ["metadata.jsonl line 3", "duplicate", "'images/a.png'", "line 1"]),
    "negatives not a list": (_negatives_not_a_list, ["metadata.jsonl line 2", "'negative_imgpath' must be a list"]),
    "empty": (_empty, ["metadata.jsonl", "empty"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_dataset_names_file_and_line_and_changes_nothing(tmp_path, case):
    build, expected = BAD_CASES[case]
    root = _valid_folder(tmp_path / "ccub")
    build(root)
    before = _snapshot(root)
    with pytest.raises(DatasetError) as caught:
        load_ccub(root)
    assert isinstance(caught.value, ValueError)
    assert len(caught.value.problems) == 1, caught.value.problems
    problem = caught.value.problems[0]
    for fragment in expected:
        assert fragment in problem
    assert problem in str(caught.value)
    assert _snapshot(root) == before


def test_all_problems_are_collected_into_one_error(tmp_path):
    root = _valid_folder(tmp_path)
    _write_metadata(
        root,
        [_entry("a.png"), "{broken", _entry("nope.png", text=7, negative_imgpath=["/abs.png", "../x.png"])],
    )
    with pytest.raises(DatasetError) as caught:
        load_ccub(root)
    problems = caught.value.problems
    assert len(problems) == 5
    assert problems[0].startswith("metadata.jsonl line 2: not valid JSON")
    assert all(p.startswith("metadata.jsonl line 3: ") for p in problems[1:])
    assert "5 problem(s)" in str(caught.value)


def test_truncated_image_is_caught_even_if_the_host_allows_truncation(tmp_path, monkeypatch):
    root = _valid_folder(tmp_path)
    _truncated_png(root)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DatasetError, match="cannot be decoded"):
        load_ccub(root)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_missing_folder_and_empty_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_ccub(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(DatasetError, match="the dataset is empty"):
        load_ccub(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- generator-driven crop and flip -------------------------------------------------------


def test_generator_flip_is_reproducible_and_moves_negatives_with_the_positive(tmp_path):
    _valid_folder(tmp_path)
    _write_metadata(tmp_path, [_entry("a.png", negative_imgpath=["negatives/a_neg0.png"])])
    dataset = load_ccub(tmp_path, resolution=32, random_flip=True)
    plain = dataset[0]
    assert torch.equal(plain["pixel_values"], dataset[0]["pixel_values"]), "no generator: deterministic"
    seen = set()
    for seed in range(16):
        item = dataset.get(0, torch.Generator().manual_seed(seed))
        again = dataset.get(0, torch.Generator().manual_seed(seed))
        assert torch.equal(item["pixel_values"], again["pixel_values"])
        assert torch.equal(item["negatives"], again["negatives"])
        flipped = torch.equal(item["pixel_values"], plain["pixel_values"].flip(-1))
        assert flipped or torch.equal(item["pixel_values"], plain["pixel_values"])
        expected_negatives = plain["negatives"].flip(-1) if flipped else plain["negatives"]
        assert torch.equal(item["negatives"], expected_negatives)
        seen.add(flipped)
    assert seen == {True, False}


def test_random_crop_is_shared_by_the_negatives(tmp_path):
    gradient = torch.arange(64, dtype=torch.uint8).mul(4).repeat(32, 1)
    image = Image.fromarray(torch.stack([gradient, 255 - gradient, gradient], -1).numpy())
    (tmp_path / "images").mkdir()
    (tmp_path / "negatives").mkdir()
    image.save(tmp_path / "images" / "a.png")
    image.save(tmp_path / "negatives" / "a_neg0.png")
    _write_metadata(tmp_path, [_entry("a.png", negative_imgpath=["negatives/a_neg0.png"])])
    dataset = load_ccub(tmp_path, resolution=32, center_crop=False, random_flip=True)
    crops = set()
    for seed in range(8):
        item = dataset.get(0, torch.Generator().manual_seed(seed))
        assert torch.equal(item["negatives"][0], item["pixel_values"])
        crops.add(item["pixel_values"][0, 0, 0].item())
    assert len(crops) > 2, "different seeds give different crops"


def test_sidecar_layout_skips_depth_maps(tmp_path):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "house.png")
    (tmp_path / "house.txt").write_text("a Korean house")
    Image.new("L", (64, 64), 128).save(tmp_path / "house_depth.png")
    dataset = load_ccub(tmp_path)
    assert [r.image.name for r in dataset.records] == ["house.png"]
