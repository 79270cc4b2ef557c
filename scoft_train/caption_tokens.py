"""Captions against CLIP's 77-token window: which ones the text encoder sees cut.

SD 1.x reads at most 77 CLIP tokens (start and end marks included); the rest of a caption
is dropped before the text encoder. When the culture terms sit past that point, the
specific caption (`text`) and the generic one (`blip_text`) become the same tokens and the
memorization loss has no signal for that example. Counted with the CLIP BPE tokenizer
shipped in `configs/clip_tokenizer` (no model is loaded).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

CLIP_TOKENS = 77


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from .models import load_clip_tokenizer

    return load_clip_tokenizer()


def token_count(text: str) -> int:
    """CLIP tokens of `text`, start and end marks included."""
    return len(_tokenizer().encode(text, add_special_tokens=True, verbose=False))


def _window(text: str) -> list[int]:
    return _tokenizer().encode(text, add_special_tokens=True, truncation=True, max_length=CLIP_TOKENS)


def truncation_notes(records: Sequence) -> list[str]:
    """One line per caption longer than the window: where (record.source), which field,
    tokens kept / total, and whether the cut makes `text` equal the generic caption."""
    notes = []
    for record in records:
        for field, text in (("text", record.text), ("blip_text", record.generic_text)):
            total = token_count(text)
            if total <= CLIP_TOKENS:
                continue
            note = (
                f"{record.source}: field '{field}' is {total} CLIP tokens; the text encoder keeps the first "
                f"{CLIP_TOKENS} ({CLIP_TOKENS}/{total} kept)"
            )
            if field == "text" and _window(record.text) == _window(record.generic_text):
                note += (
                    "; cut there it equals 'blip_text', so the memorization loss gets no signal from this "
                    "example: shorten it or move the culture terms to the front"
                )
            notes.append(note)
    return notes
