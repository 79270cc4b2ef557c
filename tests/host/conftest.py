"""Real-host fixtures: one ComfyUI server and one headless Chromium per test session.

    comfy_host -> helpers.ComfyHost   .url, .root (private ComfyUI copy), .log_path, .log_tail()
    browser    -> playwright Browser  (Debian chromium, headless, fresh profile)
    comfy_page -> helpers.ComfyPage   the host's web app, ready; .load_graph(graph) -> missing types

The plain functions behind them live in tests/host/helpers.py.
"""

from __future__ import annotations

import pytest

from .helpers import ComfyHost, ComfyPage, launch_browser, open_app, start_comfy_host, stop_comfy_host


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory) -> ComfyHost:
    """ComfyUI (CPU) on a free 127.0.0.1 port with this checkout in custom_nodes/comfyui-scoft."""
    host = start_comfy_host(tmp_path_factory.mktemp("comfyui"))
    try:
        yield host
    finally:
        stop_comfy_host(host)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def comfy_page(browser, comfy_host) -> ComfyPage:
    """A fresh page on the host's web app, closed after the test."""
    app = open_app(browser, comfy_host.url)
    try:
        yield app
    finally:
        app.page.close()
