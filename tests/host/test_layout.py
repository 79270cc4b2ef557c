"""Layout of the shipped UI workflows, from their JSON: no two nodes overlap, no link passes behind a
node, shared inputs (Prompts, Seed) sit left of every node they feed, and nodes are wide enough for
their widget labels. `arrange` places the nodes (used when the UI files are regenerated:
`.venv/bin/python -m tests.host.test_ui_workflows`).

Geometry follows LiteGraph (the canvas of ComfyUI's frontend): a node's box is `pos` to `pos + size`
plus the title bar above `pos`, and for our nodes the source badge ("comfyui-scoft") that newer
frontends draw above the title (it would cover the last widget of a node stacked right above); input slot i sits at (x + 10, y + (i + 0.7) * 20), output slot j at
(x + width - 10, y + (j + 0.7) * 20); a link is the cubic spline LiteGraph draws between them
(control points a quarter of their distance out horizontally), checked as 32 straight pieces.
"""

from __future__ import annotations

import json
import math

import pytest

from .helpers import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
TITLE_HEIGHT, BADGE_HEIGHT, SLOT_HEIGHT, SLOT_INSET = 30, 30, 20, 10
STACK_GAP = 20  # between a node's bottom and the top of the box of the next one in its column
PIECES = 32
GAP_X, MIN_WIDTH, SEED_HEIGHT = 80, 400, 82
# {workflow: {node id: (column, y)}}: shared inputs and loaders in column 0; the training node low in its
# column, so the model and prompt links to the samplers run above it, and its Advanced Settings below the
# nodes left of it.
PLACES = {
    "sample_compare": {7: (0, 70), 8: (0, 330), 1: (0, 590), 2: (0, 800), 3: (1, 300), 4: (1, 660), 5: (2, 70),
                       6: (3, 70)},
    "sfsl_spurious": {10: (0, 70), 11: (0, 330), 1: (0, 590), 9: (0, 1040), 2: (1, 1000), 4: (2, 300), 5: (2, 660),
                      3: (2, 1000), 8: (2, 1120), 6: (3, 70), 7: (4, 70)},
    "scoft_finetune_compare": {12: (0, 70), 13: (0, 330), 1: (0, 590), 2: (0, 800), 10: (1, 1250), 11: (1, 1680),
                               3: (2, 1000), 5: (3, 300), 6: (3, 660), 4: (3, 1000), 9: (3, 1120), 7: (4, 70),
                               8: (5, 70)},
    "rs_corrector_compare": {9: (0, 70), 10: (0, 330), 1: (0, 590), 2: (0, 800), 3: (1, 1250), 4: (2, 1000),
                             5: (3, 300), 6: (3, 660), 7: (4, 70), 8: (5, 70)},
}
CHAR_PX, VALUE_CHARS, MARGIN_PX = 7, 24, 70  # 12 px sans-serif; a value shows up to 24 characters


def label_width(label: str, value) -> float:
    """Pixels a widget needs to show its whole label and the first VALUE_CHARS of its value."""
    shown = 0 if isinstance(value, list) else min(len(str(value)), VALUE_CHARS)
    return (len(label) + shown) * CHAR_PX + MARGIN_PX


def arrange(name: str, graph: dict, api: dict) -> dict:
    """`graph` with PLACES positions, every SCoFT node at least MIN_WIDTH and as wide as its labels need
    (`api`: the API twin), and the Seed primitive only as tall as its widgets."""
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node in graph["nodes"]:
        if node["type"] == "PrimitiveNode":
            if node.get("title") == "Seed":
                node["size"][1] = SEED_HEIGHT
            continue
        need = max([label_width(k, v) for k, v in api[str(node["id"])]["inputs"].items()] + [node["size"][0], MIN_WIDTH])
        node["size"][0] = float(math.ceil(need / 10) * 10)
    widths: dict[int, float] = {}
    for node_id, (column, _) in PLACES[name].items():
        widths[column] = max(widths.get(column, 0.0), nodes[node_id]["size"][0])
    left = {column: 40 + sum(widths[c] + GAP_X for c in range(column)) for column in widths}
    bottom: dict[int, float] = {}
    for node_id, (column, y) in sorted(PLACES[name].items(), key=lambda item: item[1]):
        node = nodes[node_id]
        node["pos"] = [left[column], y]
        clash = bottom.get(column, -math.inf) + STACK_GAP - box(node)[1]
        if clash > 0:  # moved down below the node above it, badge included
            node["pos"][1] += clash
        bottom[column] = box(node)[3]
    return graph


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) including the title bar, and the source badge of our nodes."""
    x, y = node["pos"]
    w, h = node["size"]
    badge = BADGE_HEIGHT if node["type"].startswith("SCoFT") else 0
    return x, y - TITLE_HEIGHT - badge, x + w, y + h


def slot(node: dict, index: int, output: bool) -> tuple[float, float]:
    x, y = node["pos"]
    return (x + node["size"][0] - SLOT_INSET if output else x + SLOT_INSET), y + (index + 0.7) * SLOT_HEIGHT


def spline(start: tuple[float, float], end: tuple[float, float]) -> list[tuple[float, float]]:
    """Points along LiteGraph's link curve from an output slot to an input slot."""
    dist = math.dist(start, end) * 0.25
    c1, c2 = (start[0] + dist, start[1]), (end[0] - dist, end[1])
    points = []
    for i in range(PIECES + 1):
        t = i / PIECES
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        points.append((a * start[0] + b * c1[0] + c * c2[0] + d * end[0],
                       a * start[1] + b * c1[1] + c * c2[1] + d * end[1]))
    return points


def segment_hits_box(p: tuple[float, float], q: tuple[float, float], rect) -> bool:
    """Whether the segment p-q meets the rectangle (Liang-Barsky clipping)."""
    left, top, right, bottom = rect
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for edge_p, edge_q in ((-dx, p[0] - left), (dx, right - p[0]), (-dy, p[1] - top), (dy, bottom - p[1])):
        if edge_p == 0:
            if edge_q < 0:
                return False
            continue
        r = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, r)
        else:
            t1 = min(t1, r)
        if t0 > t1:
            return False
    return True


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def links(graph: dict):
    """(link id, origin node, origin slot, target node, target slot) for every link."""
    nodes = {node["id"]: node for node in graph["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, _ in graph["links"]:
        yield link_id, nodes[origin], origin_slot, nodes[target], target_slot


def layout_problems(graph: dict) -> list[str]:
    nodes = graph["nodes"]
    problems = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlaps(box(a), box(b)):
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    for link_id, origin, origin_slot, target, target_slot in links(graph):
        points = spline(slot(origin, origin_slot, True), slot(target, target_slot, False))
        for other in nodes:
            if other is origin or other is target:
                continue
            if any(segment_hits_box(p, q, box(other)) for p, q in zip(points, points[1:])):
                problems.append(f"link {link_id} ({origin['id']} -> {target['id']}) passes behind node "
                                f"{other['id']} ({other['type']})")
        if origin["type"] == "PrimitiveNode" and box(origin)[2] > box(target)[0]:
            problems.append(f"shared input {origin.get('title')} (node {origin['id']}) is not left of node {target['id']}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_no_overlap_and_no_link_behind_a_node(name):
    assert layout_problems(load(name)) == []


@pytest.mark.parametrize("name", NAMES)
def test_nodes_are_wide_enough_for_their_labels(name):
    """Every input label (names from the API twin) plus a short value fits the node's width, so the
    frontend does not cut labels short."""
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    for node in load(name)["nodes"]:
        for label, value in api.get(str(node["id"]), {}).get("inputs", {}).items():
            need = label_width(label, value)
            assert node["size"][0] >= need, f"{name}: node {node['id']} ({node['type']}) is {node['size'][0]} px wide; " \
                                            f"'{label}' needs {need:.0f}"


def test_checker_sees_a_link_behind_a_node():
    graph = {
        "nodes": [
            {"id": 1, "type": "A", "pos": [0, 100], "size": [100, 60]},
            {"id": 2, "type": "B", "pos": [200, 80], "size": [100, 100]},
            {"id": 3, "type": "C", "pos": [400, 100], "size": [100, 60]},
        ],
        "links": [[1, 1, 0, 3, 0, "X"]],
    }
    assert layout_problems(graph) == ["link 1 (1 -> 3) passes behind node 2 (B)"]
    graph["nodes"][1]["pos"] = [200, 400]
    assert layout_problems(graph) == []
    graph["nodes"][1]["pos"] = [50, 100]
    assert "overlap" in layout_problems(graph)[0]
