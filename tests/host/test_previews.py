"""Live previews in the real host: SCoFT Train with preview_every > 0 sends PNG preview events over the
websocket (what the frontend shows in the node) and saves the same pictures in its run folder."""

from __future__ import annotations

import io
import json
import struct
import time
import urllib.request
import uuid

import numpy as np
import pytest
import websocket
from PIL import Image

from .helpers import REPO_ROOT, start_comfy_host, stop_comfy_host, upstream

FINETUNE = REPO_ROOT / "workflows" / "api" / "scoft_finetune_compare.json"
PREVIEW_IMAGE, PNG = 1, 2  # ComfyUI server.BinaryEventTypes.PREVIEW_IMAGE; image type 2 = PNG
RUN = "preview_test"


def run_with_websocket(host, prompt: dict, timeout: float = 900.0) -> tuple[list[bytes], list[dict]]:
    """Queue `prompt` as a websocket client; return its binary frames and JSON messages until it ends."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(host.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=60)
    try:
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        request = urllib.request.Request(host.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            prompt_id = json.loads(resp.read())["prompt_id"]
        frames, messages, deadline = [], [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                data = ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            if isinstance(data, bytes):
                frames.append(data)
                continue
            message = json.loads(data)
            messages.append(message)
            if message["type"] == "execution_error":
                raise AssertionError(f"{message['data']}\nlog:\n{host.log_tail()}")
            if message["type"] == "executing" and message["data"].get("node") is None \
                    and message["data"].get("prompt_id") == prompt_id:
                return frames, messages
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s; log:\n{host.log_tail()}")
    finally:
        ws.close()


@pytest.fixture(scope="module")
def busy_host(tmp_path_factory):
    """A host of its own with a long start-up allowance (CI machines shared by several runs start slowly)."""
    host = start_comfy_host(tmp_path_factory.mktemp("comfyui_previews"), timeout=600.0)
    try:
        yield host
    finally:
        stop_comfy_host(host)


def test_scoft_train_shows_and_saves_previews(busy_host):
    prompt = json.loads(FINETUNE.read_text(encoding="utf-8"))
    # Plain fine-tuning (preset FT) needs no negatives: the dataset goes straight to training.
    prompt["3"]["inputs"].update({"steps": 4, "preset": "FT", "run_name": RUN, "dataset": ["2", 0]})
    prompt["11"]["inputs"]["preview_every"] = 2  # in SCoFT Advanced Settings
    frames, messages = run_with_websocket(busy_host, upstream(prompt, "4"))

    previews = [frame for frame in frames if struct.unpack(">II", frame[:8]) == (PREVIEW_IMAGE, PNG)]
    assert len(previews) == 2, [struct.unpack(">II", frame[:8]) for frame in frames]
    folder = busy_host.root / "output" / "scoft_runs" / RUN / "previews"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002.png", "step_000004.png"]
    with Image.open(io.BytesIO(previews[-1][8:])) as sent, Image.open(folder / "step_000004.png") as saved:
        assert sent.size == saved.size  # shown at full size, not shrunk with blur
        assert np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(saved.convert("RGB")))
        assert len(saved.convert("RGB").getcolors(maxcolors=1 << 20)) > 100  # samples and a graph, not blank
    training = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "3"]
    assert training[-1]["value"] == training[-1]["max"] == 4
