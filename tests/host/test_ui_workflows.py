"""UI-format workflows (workflows/*.json) in the host's real web page.

Each file loads through the page's own loadGraphData with every node type known, and
the page's graphToPrompt gives back its API twin (workflows/api/<same name>): same
nodes, class types, links and widget values.

The UI files are generated from the API twins by the page itself (`build_ui_graph`):
    .venv/bin/python -m tests.host.test_ui_workflows   # rewrites workflows/*.json
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, launch_browser, open_app, start_comfy_host, stop_comfy_host
from .test_layout import arrange

WORKFLOWS = REPO_ROOT / "workflows"
NAMES = ("scoft_finetune_compare", "sample_compare", "rs_corrector_compare", "sfsl_spurious")

# Widgets that must agree across nodes are driven by one Primitive node in the UI:
# {workflow: {primitive title: [(node id, widget name), ...]}}
SHARED = {
    "scoft_finetune_compare": {
        "Prompts": [("5", "prompts"), ("6", "prompts"), ("7", "prompts")],
        "Seed": [("5", "seed"), ("6", "seed")],
    },
    "sample_compare": {
        "Prompts": [("3", "prompts"), ("4", "prompts"), ("5", "prompts")],
        "Seed": [("3", "seed"), ("4", "seed")],
    },
    "rs_corrector_compare": {
        "Prompts": [("5", "prompts"), ("6", "prompts"), ("7", "prompts")],
        "Seed": [("5", "seed"), ("6", "seed")],
    },
    "sfsl_spurious": {
        "Prompts": [("4", "prompts"), ("5", "prompts"), ("6", "prompts")],
        "Seed": [("4", "seed"), ("5", "seed")],
    },
}
COLUMN_WIDTH, ROW_GAP, ORIGIN = 420, 60, (40, 40)
# UI-only Note nodes: {workflow: [(title, text, pos, size), ...]}
NOTES = {
    "sfsl_spurious": [(
        "CPU defaults",
        "Sized to finish on a CPU: SFSL Train runs 100 steps here. The bias-lab SFSL experiment "
        "(python -m scoft_train biaslab sfsl) trains 600 steps, about 45 minutes at 4.6 s per step on 2 CPU cores. "
        "On a GPU, raise SFSL Train's steps to 600 (and preview_every in SFSL Advanced Settings to 50) for the full "
        "effect of the spurious loss.",
        [40, 800], [400, 170],
    )],
}

_BUILD_JS = """({prompt, shared, positions, left}) => {
    const app = window.app, LG = window.LiteGraph, graph = app.graph;
    graph.clear();
    const nodes = {};
    for (const [id, spec] of Object.entries(prompt)) {
        const node = LG.createNode(spec.class_type);
        if (!node) throw new Error(`unknown node type ${spec.class_type}`);
        node.id = Number(id);
        graph.add(node);
        if (spec._meta && spec._meta.title) node.title = spec._meta.title;
        node.pos = positions[id];
        nodes[id] = node;
    }
    const widget = (node, name) => (node.widgets || []).find((w) => w.name === name);
    const fixSeeds = (node) => (node.widgets || []).forEach((w) => {
        if (w.name === "control_after_generate") w.value = "fixed";
    });
    for (const [id, spec] of Object.entries(prompt)) {
        for (const [name, value] of Object.entries(spec.inputs)) {
            if (Array.isArray(value)) {
                nodes[value[0]].connect(value[1], nodes[id], nodes[id].findInputSlot(name));
            } else {
                const w = widget(nodes[id], name);
                if (!w) throw new Error(`node ${id} (${spec.class_type}) has no widget ${name}`);
                w.value = value;
            }
        }
        fixSeeds(nodes[id]);
    }
    let nextId = Math.max(...Object.keys(prompt).map(Number)) + 1;
    for (const [title, targets] of Object.entries(shared)) {
        const primitive = LG.createNode("PrimitiveNode");
        primitive.id = nextId++;
        primitive.title = title;
        graph.add(primitive);
        const [firstId, firstName] = targets[0];
        const value = prompt[firstId].inputs[firstName];
        for (const [id, name] of targets) {
            const node = nodes[id];
            node.convertWidgetToInput(widget(node, name));
            primitive.connect(0, node, node.findInputSlot(name));
        }
        primitive.widgets[0].value = value;
        fixSeeds(primitive);
        primitive.pos = [left, positions[firstId][1] + (title === "Seed" ? 260 : 0)];
        primitive.size = [Math.max(primitive.size[0], 330), Math.max(primitive.size[1], 200)];
    }
    graph.setDirtyCanvas(true, true);
    return graph.serialize();
}"""


_ZOOM_OUT_JS = """() => {
    const ds = window.app.canvas.ds;
    ds.scale = 0.6;  // LiteGraph draws widget text from 0.6 up
    ds.offset = [0, 0];
    window.app.graph.setDirtyCanvas(true, true);
}"""


def layout(prompt: dict) -> dict[str, list[float]]:
    """Columns by link depth (sources left; column 0 is kept for the Primitive nodes), nodes
    stacked top-down in id order within a column."""
    depth: dict[str, int] = {}

    def node_depth(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((node_depth(p) for p in parents), default=0)
        return depth[node_id]

    heights: dict[int, float] = {}
    positions = {}
    for node_id in sorted(prompt, key=int):
        column = node_depth(node_id)
        y = heights.get(column, ORIGIN[1])
        positions[node_id] = [ORIGIN[0] + column * COLUMN_WIDTH, y]
        heights[column] = y + 120 + 28 * len(prompt[node_id]["inputs"]) + ROW_GAP
    return positions


def build_ui_graph(page, name: str) -> dict:
    """The UI graph of workflows/api/<name>.json, built and serialized by the page's own LiteGraph."""
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    return page.evaluate(_BUILD_JS, {"prompt": prompt, "shared": SHARED[name], "positions": layout(prompt), "left": ORIGIN[0]})


def add_notes(name: str, graph: dict) -> dict:
    """`graph` with the NOTES of workflow `name` appended as Note nodes (UI only; not part of the prompt)."""
    for title, text, pos, size in NOTES.get(name, []):
        graph["last_node_id"] += 1
        graph["nodes"].append({"id": graph["last_node_id"], "type": "Note", "pos": list(pos), "size": list(size),
                               "flags": {}, "order": len(graph["nodes"]), "mode": 0, "title": title,
                               "properties": {"text": ""}, "widgets_values": [text], "color": "#432",
                               "bgcolor": "#653"})
    return graph


def same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def prompt_differences(got: dict, want: dict) -> list[str]:
    """What differs between two API prompts: node ids, class types, links, widget values (titles ignored)."""
    problems = []
    if set(got) != set(want):
        problems.append(f"node ids: page {sorted(got, key=int)}, API file {sorted(want, key=int)}")
    for node_id in sorted(set(got) & set(want), key=int):
        g, w = got[node_id], want[node_id]
        if g["class_type"] != w["class_type"]:
            problems.append(f"node {node_id}: class {g['class_type']} vs {w['class_type']}")
            continue
        for name in sorted(set(g["inputs"]) | set(w["inputs"])):
            a, b = g["inputs"].get(name, "<absent>"), w["inputs"].get(name, "<absent>")
            if isinstance(a, list) and isinstance(b, list):
                ok = [str(a[0]), a[1]] == [str(b[0]), b[1]]
            else:
                ok = same_value(a, b)
            if not ok:
                problems.append(f"node {node_id} ({w['class_type']}).{name}: page {a!r}, API file {b!r}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_and_matches_api_twin(comfy_page, tmp_path, name):
    graph = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    missing = comfy_page.load_graph(graph)
    assert missing == [], f"{name}.json: node types unknown to the page: {missing}"
    comfy_page.page.evaluate(_ZOOM_OUT_JS)
    shot = comfy_page.screenshot(tmp_path / f"{name}.png")
    assert shot.stat().st_size > 10_000

    got = comfy_page.graph_to_prompt()
    want = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    assert prompt_differences(got, want) == []
    assert comfy_page.errors == []


def test_ui_workflows_are_listed_flat():
    """ComfyUI lists a custom node's workflows/*.json one level deep; each has an API twin."""
    ui_files = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    api_files = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
    assert ui_files == api_files == sorted(NAMES)
    for name in NAMES:
        graph = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
        assert {"nodes", "links", "version"} <= set(graph), f"{name}.json is not a UI-format graph"


def regenerate() -> None:
    """Rewrite workflows/<name>.json from the API twins, using a throwaway host and browser."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as workdir, sync_playwright() as playwright:
        host = start_comfy_host(Path(workdir))
        browser = launch_browser(playwright)
        try:
            app = open_app(browser, host.url)
            for name in NAMES:
                api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
                graph = add_notes(name, arrange(name, build_ui_graph(app.page, name), api))
                target = WORKFLOWS / f"{name}.json"
                target.write_text(json.dumps(graph, indent=1) + "\n", encoding="utf-8")
                logging.info("wrote %s", target)
        finally:
            browser.close()
            stop_comfy_host(host)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    regenerate()
