"""The bias-lab world: four concepts, five invented cultures and one shared stereotype.

Every culture has an authentic signature made of low-frequency cues that survive a
VAE round trip at 32 px: a palette (sky, ground, body, accent) and a motif filling the
object's body (elements >= 4 px); its shape style (roof, vessel, cut, awning) says
which culture is meant. The stereotype look is the same for every culture: drab
browns, no motif, grime blotches and cracks. It keeps the culture's silhouette, as
real stereotypes keep a recognisable outline while flattening everything else; a
shape-less shared stereotype would be unconditionally common, and classifier-free
guidance would then steer every culture prompt away from it (it carries no
information about the prompt), hiding the bias the corpus teaches.
The names are invented; no real nation is depicted.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTION = 32
CONCEPTS = ("house", "meal", "garment", "market")
MOTIFS = ("stripes_h", "checker", "dots", "chevron", "stripes_v")
MODES = ("authentic", "stereotype")
NONE_LABEL = "none"  # the signature label of a stereotype rendering

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Culture:
    """An invented culture: its name, whether the web corpus over-represents it, its
    authentic signature (palette, motif from MOTIFS) and its shape style 0..4."""

    name: str
    majority: bool
    sky: Color
    ground: Color
    body: Color
    accent: Color
    motif: str
    shape: int


CULTURES = (
    Culture("Velmora", True, (135, 200, 235), (95, 170, 95), (235, 200, 50), (35, 80, 180), "stripes_h", 0),
    Culture("Quenlaro", True, (245, 215, 200), (190, 110, 90), (200, 35, 70), (250, 245, 225), "checker", 1),
    Culture("Tisharu", False, (185, 160, 235), (60, 130, 120), (30, 170, 160), (250, 210, 40), "dots", 2),
    Culture("Ombresk", False, (255, 190, 110), (130, 60, 110), (235, 95, 140), (40, 45, 120), "chevron", 3),
    Culture("Zulavin", False, (120, 230, 200), (40, 90, 160), (150, 210, 40), (120, 30, 140), "stripes_v", 4),
)
CULTURE_NAMES = tuple(c.name for c in CULTURES)
MAJORITY = tuple(c.name for c in CULTURES if c.majority)
MINORITY = tuple(c.name for c in CULTURES if not c.majority)
SIGNATURES = CULTURE_NAMES + (NONE_LABEL,)


@dataclass(frozen=True)
class StereotypeLook:
    """The one degraded rendering the biased corpus gives under-represented cultures."""

    sky: Color = (165, 150, 125)
    ground: Color = (110, 88, 60)
    body: Color = (128, 98, 66)
    trim: Color = (84, 64, 44)
    grime: Color = (70, 54, 38)
    crack: Color = (45, 34, 24)


STEREOTYPE = StereotypeLook()


@dataclass(frozen=True)
class Awning:
    """The spurious feature: a canopy across the top of the scene, vertical stripes of
    `stripe` units in two colours no culture's palette uses, `band` units tall with a
    scalloped hem of radius `scallop`. The classifier's web photos show it behind
    nearly every market (`spurious.py`); it is background, never part of the object."""

    color: Color = (240, 100, 20)
    alternate: Color = (250, 245, 235)
    stripe: float = 4.0
    band: float = 5.0
    scallop: float = 2.0


AWNING = Awning()


def culture(name: str) -> Culture:
    for item in CULTURES:
        if item.name == name:
            return item
    raise ValueError(f"unknown bias-lab culture {name!r}; choose one of {', '.join(CULTURE_NAMES)}")
