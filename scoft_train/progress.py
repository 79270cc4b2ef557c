"""The one progress signature, on_step(step, total, logs), and its terminal form."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

OnStep = Callable[[int, int, dict], None]


@contextlib.contextmanager
def tqdm_progress(description: str) -> Iterator[OnStep]:
    """An on_step callback drawing a tqdm bar with the latest loss values."""
    from tqdm import tqdm

    bar = None

    def on_step(step: int, total: int, logs: dict) -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=description, initial=step - 1)
        bar.update(step - bar.n)
        shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss") and isinstance(v, float)}
        if shown:
            bar.set_postfix(shown, refresh=False)

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.close()
