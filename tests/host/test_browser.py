"""ComfyUI's own web app in headless Chromium: graphs load through app.loadGraphData."""

from __future__ import annotations

import json

from PIL import Image, ImageStat

from .helpers import FIXTURES

UI_GRAPH = FIXTURES / "empty_image_ui.json"


def test_ui_graph_loads_without_missing_nodes(comfy_page, tmp_path):
    missing = comfy_page.load_graph(UI_GRAPH)
    assert missing == []
    types = comfy_page.page.evaluate("() => window.app.graph._nodes.map((n) => n.type).sort()")
    assert types == ["EmptyImage", "ImageInvert", "SaveImage"]

    # The frontend turns the graph into the same API prompt the client would queue.
    prompt = comfy_page.graph_to_prompt()
    assert {node["class_type"] for node in prompt.values()} == {"EmptyImage", "ImageInvert", "SaveImage"}
    assert prompt["1"]["inputs"] == {"width": 64, "height": 48, "batch_size": 1, "color": 16711680}

    shot = comfy_page.screenshot(tmp_path / "graph.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as img:
        assert img.size == (1280, 800)
        rgb = img.convert("RGB")
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 50  # nodes, links and text, not a blank page
        assert max(ImageStat.Stat(rgb).stddev) > 5
    assert comfy_page.errors == []


def test_missing_node_types_are_reported(comfy_page):
    graph = json.loads(UI_GRAPH.read_text())
    graph["nodes"][1]["type"] = "SCoFTNotInstalled"
    assert comfy_page.load_graph(graph) == ["SCoFTNotInstalled"]
