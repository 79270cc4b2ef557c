"""The headless client (python -m scoft_train.client) against a real ComfyUI server."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image

from scoft_train import client
from scoft_train.biaslab import BIASLAB_CCUB_DIR

from .helpers import FIXTURES, REPO_ROOT, free_port

OK_PROMPT = FIXTURES / "empty_image_api.json"


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scoft_train.client", "run", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


def write_prompt(tmp_path, prompt: dict, name: str = "prompt.json"):
    path = tmp_path / name
    path.write_text(json.dumps(prompt), encoding="utf-8")
    return path


def test_cli_runs_workflow_and_downloads_images(comfy_host, tmp_path):
    out = tmp_path / "out"
    # Override by node title and by node id; values are parsed as JSON.
    result = run_cli(str(OK_PROMPT), "--server", comfy_host.url, "--out", str(out),
                     "--set", "Canvas.color=65280", "--set", "2.filename_prefix=client_ok")
    assert result.returncode == 0, result.stderr

    written = sorted(out.iterdir())
    assert len(written) == 2 and all(p.name.startswith("client_ok") for p in written), written
    assert set(result.stdout.split()) == {str(p) for p in written}  # stdout lists the saved files
    for path in written:
        with Image.open(path) as img:
            assert img.size == (64, 48)
            assert img.convert("RGB").getpixel((10, 10)) == (0, 255, 0)
    assert "queued prompt" in result.stderr and "saved" in result.stderr


def test_cli_reports_validation_error_and_server_recovers(comfy_host, tmp_path):
    prompt = json.loads(OK_PROMPT.read_text())
    prompt["1"]["inputs"]["width"] = 0  # EmptyImage.width has min 1
    result = run_cli(str(write_prompt(tmp_path, prompt)), "--server", comfy_host.url, "--out", str(tmp_path / "bad"))
    assert result.returncode == client.EXIT_FAILED
    assert "node 1 (EmptyImage" in result.stderr and "smaller than min" in result.stderr, result.stderr
    assert not (tmp_path / "bad").exists()

    # The server is still healthy and serves the next prompt (function API this time).
    paths = client.run_workflow(json.loads(OK_PROMPT.read_text()), comfy_host.url, tmp_path / "again", timeout=60)
    assert len(paths) == 2 and all(p.is_file() for p in paths)


def test_cli_reports_execution_error(comfy_host, tmp_path):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
        # Reflect padding of 10 px on a 4x4 image raises inside the node at run time.
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 10, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}},
    }
    result = run_cli(str(write_prompt(tmp_path, prompt)), "--server", comfy_host.url, "--out", str(tmp_path / "x"))
    assert result.returncode == client.EXIT_FAILED
    assert "node 2 (ImageBlur) failed" in result.stderr, result.stderr
    assert "RuntimeError" in result.stderr


def test_cli_unknown_node_type(comfy_host, tmp_path):
    prompt = {"1": {"class_type": "NoSuchNodeHere", "inputs": {}}}
    result = run_cli(str(write_prompt(tmp_path, prompt)), "--server", comfy_host.url, "--out", str(tmp_path / "x"))
    assert result.returncode == client.EXIT_FAILED
    assert "node 1 (NoSuchNodeHere)" in result.stderr


def test_cli_server_unreachable(tmp_path):
    result = run_cli(str(OK_PROMPT), "--server", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x"))
    assert result.returncode == client.EXIT_UNREACHABLE
    assert "cannot reach the ComfyUI server" in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [("Nope.width=3", "no node with id or title 'Nope'"), ("1width=3", "is not NODE.INPUT=VALUE")],
)
def test_cli_bad_override(tmp_path, override, message):
    result = run_cli(str(OK_PROMPT), "--set", override, "--out", str(tmp_path / "x"))
    assert result.returncode == client.EXIT_USAGE
    assert message in result.stderr


def test_overrides_parse_json_and_leave_input_alone():
    prompt = json.loads(OK_PROMPT.read_text())
    changed = client.apply_overrides(prompt, ["Canvas.width=128", "Save Image.filename_prefix=a/b", "1.color=[1]"])
    assert changed["1"]["inputs"]["width"] == 128
    assert changed["2"]["inputs"]["filename_prefix"] == "a/b"
    assert changed["1"]["inputs"]["color"] == [1]
    assert prompt["1"]["inputs"]["width"] == 64


def test_ui_format_file_is_refused(tmp_path):
    result = run_cli(str(FIXTURES / "empty_image_ui.json"), "--out", str(tmp_path / "x"))
    assert result.returncode == client.EXIT_USAGE
    assert "UI-format graph" in result.stderr


def test_history_polling_without_websocket(comfy_host, tmp_path, monkeypatch):
    monkeypatch.setattr(client, "_open_websocket", lambda server, client_id: None)
    prompt = client.apply_overrides(json.loads(OK_PROMPT.read_text()), ["Canvas.batch_size=1", "2.filename_prefix=polled"])
    paths = client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=60)
    assert [p.name for p in paths] == ["polled_00001_.png"]


class _StuckServer(BaseHTTPRequestHandler):
    """Accepts prompts and never finishes them; records what the client asked for."""

    calls: ClassVar[list[tuple[str, str, bytes]]] = []

    def _answer(self, body: dict, code: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, b""))
        answers = {
            "/object_info": {"EmptyImage": {}, "SaveImage": {}},
            "/queue": {"queue_running": [], "queue_pending": [[0, "p1", {}, {}, []]]},
        }
        self._answer(answers.get(self.path, {}), 200)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(("POST", self.path, body))
        self._answer({"prompt_id": "p1", "number": 0, "node_errors": {}} if self.path == "/prompt" else {})

    def log_message(self, *args):
        pass


def test_timeout_cancels_the_queued_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(client, "_POLL_INTERVAL", 0.05)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StuckServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(client.WorkflowTimeout, match="no progress from the server for 0.5 s"):
            client.run_workflow(json.loads(OK_PROMPT.read_text()), url, tmp_path, timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert ("POST", "/queue", b'{"delete": ["p1"]}') in _StuckServer.calls


# ------------------------------------------------------------- partly accepted prompts


def partial_prompt() -> dict:
    """Two outputs; the second reads from an EmptyImage of width 0, so it fails validation while the
    first passes: ComfyUI answers HTTP 200 with node_errors and would run only the first."""
    prompt = json.loads(OK_PROMPT.read_text())
    prompt["2"]["inputs"]["filename_prefix"] = "partial_ok"
    prompt["3"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0},
                   "_meta": {"title": "Broken canvas"}}
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "partial_bad"},
                   "_meta": {"title": "Second save"}}
    return prompt


def test_partly_accepted_prompt_fails_and_names_the_dropped_outputs(comfy_host, tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(write_prompt(tmp_path, partial_prompt())), "--server", comfy_host.url, "--out", str(out))
    assert result.returncode == client.EXIT_FAILED, result.stderr
    assert "accepted only part of the prompt" in result.stderr, result.stderr
    assert "node 4 (SaveImage, 'Second save') did not run" in result.stderr, result.stderr
    assert "node 3 (EmptyImage, 'Broken canvas')" in result.stderr and "smaller than min" in result.stderr
    assert "node 2 (SaveImage" not in result.stderr.split("accepted only part")[1].split("was cancelled")[0]
    assert "--allow-partial" in result.stderr
    assert result.stdout == "" and not out.exists()  # nothing downloaded, nothing claimed


def test_allow_partial_runs_the_outputs_that_passed(comfy_host, tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(write_prompt(tmp_path, partial_prompt())), "--server", comfy_host.url, "--out", str(out),
                     "--allow-partial")
    assert result.returncode == 0, result.stderr
    assert "node 4 (SaveImage, 'Second save') did not run" in result.stderr  # still said, as a warning
    written = sorted(out.iterdir())
    assert len(written) == 2 and all(p.name.startswith("partial_ok") for p in written), written


def test_skipped_outputs_follow_links_when_the_server_does_not_list_them():
    prompt = partial_prompt()
    info = {"EmptyImage": {"output_node": False}, "SaveImage": {"output_node": True}}
    errors = {"3": {"errors": [{"message": "Value 0 smaller than min of 1", "details": "width"}]}}
    assert client.skipped_outputs(errors, prompt, info) == {"4": ["3"]}


# ------------------------------------------------------------------- silence limit


def sampler_prompt(steps: int, seed: int) -> dict:
    """The embedded tiny model sampling one image: SCoFT Sampler reports every step as progress."""
    return {
        "1": {"class_type": "SCoFTLoadModel", "inputs": {"model": "default", "config": "auto",
                                                         "prediction_type": "auto", "dtype": "float32", "device": "auto"}},
        "2": {"class_type": "SCoFTSampler", "inputs": {"model": ["1", 0], "prompts": "a house", "negative_prompt": "",
                                                       "seed": seed, "steps": steps, "cfg": 5.0, "scheduler": "ddim",
                                                       "width": 0, "height": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_run_longer_than_the_silence_limit_finishes_while_progress_comes(comfy_host, tmp_path):
    # Measure this machine's step time first: a warm-up run loads and caches the model, then a
    # 1-step and a 21-step run differ by 20 steps and nothing else (HTTP and start-up cancel out).
    # Then pick a silence limit a few steps long and a run three times that long.
    client.run_workflow(sampler_prompt(steps=3, seed=1), comfy_host.url, tmp_path / "warm", timeout=300)
    durations = []
    for steps, seed in ((1, 3), (21, 4)):
        started = time.monotonic()
        client.run_workflow(sampler_prompt(steps=steps, seed=seed), comfy_host.url, tmp_path / f"m{steps}", timeout=300)
        durations.append(time.monotonic() - started)
    per_step = max((durations[1] - durations[0]) / 20, 1e-3)
    limit = max(1.0, 3 * per_step)
    steps = math.ceil(3 * limit / per_step)

    started = time.monotonic()
    paths = client.run_workflow(sampler_prompt(steps=steps, seed=2), comfy_host.url, tmp_path / "long", timeout=limit)
    elapsed = time.monotonic() - started
    assert len(paths) == 1
    assert elapsed > 1.5 * limit, (elapsed, limit, steps)  # it outlived the limit because progress kept coming


def feed_until_idle(host, fifo) -> None:
    """Write a PNG into the pipe for every reader until the server's queue is empty."""
    png = (BIASLAB_CCUB_DIR / "images" / "velmora_house_0.png").read_bytes()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            if host.get_json("/queue") == {"queue_running": [], "queue_pending": []}:
                break
            time.sleep(0.1)
            continue
        os.set_blocking(fd, True)
        try:
            os.write(fd, png)
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)
    assert host.get_json("/queue") == {"queue_running": [], "queue_pending": []}, host.log_tail()


@pytest.fixture
def stalled_input(comfy_host):
    """input/stall_<n>.png as a named pipe: ComfyUI's LoadImage blocks reading it and sends nothing,
    as on a hung network drive. Afterwards the pipe is fed until the server is idle again."""
    fifo = comfy_host.root / "input" / f"stall_{os.getpid()}.png"
    os.mkfifo(fifo)
    try:
        yield fifo
    finally:
        feed_until_idle(comfy_host, fifo)
        fifo.unlink()


def test_stalled_run_times_out_after_the_silence_limit_and_is_cancelled(comfy_host, stalled_input, tmp_path):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": stalled_input.name}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    started = time.monotonic()
    result = run_cli(str(write_prompt(tmp_path, prompt)), "--server", comfy_host.url, "--out", str(tmp_path / "x"),
                     "--timeout", "3")
    elapsed = time.monotonic() - started
    assert result.returncode == client.EXIT_TIMEOUT, result.stderr
    assert "no progress from the server for 3 s" in result.stderr and "it was cancelled" in result.stderr
    assert elapsed < 60, elapsed
    prompt_id = result.stderr.split("queued prompt ")[1].split()[0]
    queue = comfy_host.get_json("/queue")
    assert [item[1] for item in queue["queue_running"]] == [prompt_id]  # still blocked in the pipe...
    feed_until_idle(comfy_host, stalled_input)
    status = comfy_host.get_json("/history/" + prompt_id)[prompt_id]["status"]
    assert "execution_interrupted" in [kind for kind, _ in status["messages"]], status  # ...and cancelled
