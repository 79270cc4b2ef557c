"""The judge: a judge-format network (../judgenet.py) that reads a world image and says
what it shows.

Heads (logits): concept [B, 4] (CONCEPTS), signature [B, 6] (the five cultures +
"none"), stereotype [B, 2] (no, yes). Trained on VAE round-tripped renders, since
generated images are VAE-decoded. It is the lab's development judge: the ablation's
circular row uses it as the feature space of L_P / L_C (backbone "biaslab-judge",
`features.JudgeDistance`), so the headline is scored by others (scoring.py).
The same network with other heads is the spurious-feature lab's classifier and oracle
(`spurious.py`).
"""

from __future__ import annotations

from .world import CONCEPTS, SIGNATURES

HEADS: dict[str, tuple[str, ...]] = {"concept": CONCEPTS, "signature": SIGNATURES, "stereotype": ("no", "yes")}
