"""Headless client for a running ComfyUI server.

Queues an API-format workflow (``workflows/api/*.json``), follows its progress and
downloads every image it produced::

    python -m scoft_train.client run workflows/api/demo.json \\
        --server http://127.0.0.1:8188 --out outputs/demo \\
        --set "5.steps=20" --set "Prompt.text=a temple at dusk"

``--set NODE.INPUT=VALUE`` overrides one input: NODE is a node id or a node title
(``_meta.title``), VALUE is parsed as JSON when it parses (``20``, ``1.5``,
``true``, ``[1, 0]``) and taken as a string otherwise.

Exit codes: 0 success; 1 the server rejected the prompt or a node failed;
2 bad command line or workflow file; 3 server unreachable; 4 timeout.

Function API, used by the CLI and the tests::

    run_workflow(prompt, server, out_dir, timeout=600.0) -> list[Path]

Progress comes over the server's websocket (``/ws``) when the ``websocket-client``
package is installed and the socket opens, otherwise by polling ``/history``.
Standard library plus that one optional package; nothing from ComfyUI or torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("scoft_train.client")

DEFAULT_SERVER = "http://127.0.0.1:8188"
DEFAULT_TIMEOUT = 600.0
_HTTP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.5

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class ClientError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = EXIT_FAILED


class WorkflowFileError(ClientError):
    """The workflow file or an override is unusable (before anything is sent)."""

    exit_code = EXIT_USAGE


class ServerUnreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class PromptRejected(ClientError):
    """The server refused the prompt (validation: /prompt answered 400)."""


class ExecutionFailed(ClientError):
    """A node raised while the prompt ran, or the run was interrupted."""


class WorkflowTimeout(ClientError):
    exit_code = EXIT_TIMEOUT


# --------------------------------------------------------------------------- input


def load_prompt(path: str | Path) -> dict[str, Any]:
    """Read an API-format prompt ({node_id: {class_type, inputs, _meta}})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowFileError(f"workflow file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowFileError(
            f"{path} is a UI-format graph (it has 'nodes' and 'links'); the client needs the "
            "API format: use the twin in workflows/api/ or ComfyUI's 'Save (API Format)'"
        )
    if not isinstance(data, dict) or not data or not all(
        isinstance(n, dict) and "class_type" in n for n in data.values()
    ):
        raise WorkflowFileError(
            f"{path} is not an API-format prompt: expected an object mapping node ids to "
            "{'class_type': ..., 'inputs': {...}}"
        )
    return data


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists, quoted strings), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _find_node(prompt: Mapping[str, Any], ref: str) -> str:
    if ref in prompt:
        return ref
    matches = [nid for nid, node in prompt.items() if (node.get("_meta") or {}).get("title") == ref]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise WorkflowFileError(f"node title {ref!r} is ambiguous (nodes {', '.join(matches)}); use the node id")
    known = ", ".join(
        f"{nid} ({(node.get('_meta') or {}).get('title') or node.get('class_type')})" for nid, node in prompt.items()
    )
    raise WorkflowFileError(f"no node with id or title {ref!r}; nodes are: {known}")


def apply_overrides(prompt: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``prompt`` with ``NODE.INPUT=VALUE`` overrides applied."""
    result = json.loads(json.dumps(prompt))  # deep copy; the input is never mutated
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise WorkflowFileError(f"override {item!r} is not NODE.INPUT=VALUE (e.g. 3.seed=42)")
        node_id = _find_node(result, node_ref)
        inputs = result[node_id].setdefault("inputs", {})
        if input_name not in inputs:
            logger.warning(
                "node %s (%s) had no input %r; adding it (known inputs: %s)",
                node_id, result[node_id]["class_type"], input_name, ", ".join(inputs) or "none",
            )
        inputs[input_name] = parse_value(raw)
        logger.info("set node %s %s = %r", node_id, input_name, inputs[input_name])
    return result


# ---------------------------------------------------------------------------- HTTP


class _Server:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _request(self, path: str, body: Any = None) -> bytes:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT) as resp:
                return resp.read()
        except urllib.error.HTTPError:
            raise
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(
                f"cannot reach the ComfyUI server at {self.url} ({reason}); is it running? "
                "start it with `python main.py --listen 127.0.0.1 --port 8188` or pass --server"
            ) from None

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def post_json(self, path: str, body: Any) -> Any:
        raw = self._request(path, body)
        return json.loads(raw) if raw.strip() else None

    def download(self, ref: Mapping[str, Any]) -> bytes:
        query = urllib.parse.urlencode(
            {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        )
        return self._request("/view?" + query)


# ------------------------------------------------------------------------- errors


def format_node_errors(response: Mapping[str, Any], prompt: Mapping[str, Any]) -> str:
    """Readable text for a /prompt 400 body: {'error': {...}, 'node_errors': {id: {...}}}."""
    lines = []
    error = response.get("error")
    if isinstance(error, Mapping):
        lines.append(f"{error.get('message', 'prompt rejected')}" + (f": {error['details']}" if error.get("details") else ""))
    elif error:
        lines.append(str(error))
    node_errors = response.get("node_errors") or {}
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type") or prompt.get(node_id, {}).get("class_type", "?")
        title = (prompt.get(node_id, {}).get("_meta") or {}).get("title")
        name = f"node {node_id} ({class_type}" + (f", {title!r})" if title and title != class_type else ")")
        for reason in entry.get("errors", []):
            detail = reason.get("details") or ""
            lines.append(f"{name}: {reason.get('message', 'error')}" + (f": {detail}" if detail else ""))
    return "\n".join(lines) or json.dumps(response)


def format_execution_error(data: Mapping[str, Any]) -> str:
    """Readable text for an execution_error / execution_interrupted message."""
    node = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
    if "exception_message" not in data:
        return f"{node}: execution interrupted"
    text = f"{node} failed: {data.get('exception_type', 'Exception')}: {str(data['exception_message']).strip()}"
    tb = data.get("traceback") or []
    if tb:
        text += "\n" + "".join(tb[-3:]).rstrip()
    return text


# ------------------------------------------------------------------------ running


def _check_node_types(server: _Server, prompt: Mapping[str, Any]) -> None:
    try:
        known = server.get_json("/object_info")
    except urllib.error.HTTPError as exc:
        raise ClientError(f"{server.url}/object_info answered HTTP {exc.code}; is this a ComfyUI server?") from None
    missing = {nid: node["class_type"] for nid, node in prompt.items() if node["class_type"] not in known}
    if missing:
        listed = ", ".join(f"node {nid} ({ct})" for nid, ct in missing.items())
        raise PromptRejected(
            f"the server at {server.url} has no node type for {listed}; install the custom node "
            "suite that provides it (for SCoFT nodes: link this repo into ComfyUI/custom_nodes) "
            "and check the server log for import errors"
        )


def _queue(server: _Server, prompt: Mapping[str, Any], client_id: str) -> str:
    try:
        answer = server.post_json("/prompt", {"prompt": prompt, "client_id": client_id})
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            raise PromptRejected(f"/prompt answered HTTP {exc.code}: {body.strip()[:2000]}") from None
        raise PromptRejected(format_node_errors(parsed, prompt)) from None
    for node_id, entry in (answer.get("node_errors") or {}).items():
        # Outputs that failed validation are dropped while the rest runs: say so.
        logger.warning("%s", format_node_errors({"node_errors": {node_id: entry}}, prompt))
    return answer["prompt_id"]


def _open_websocket(server: _Server, client_id: str):
    try:
        import websocket  # the websocket-client package
    except ImportError:
        logger.info("websocket-client is not installed; following progress by polling /history")
        return None
    ws_url = "ws" + server.url[len("http"):] if server.url.startswith("http") else server.url
    try:
        ws = websocket.create_connection(f"{ws_url}/ws?clientId={client_id}", timeout=_HTTP_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure here just means: poll instead
        logger.info("websocket unavailable (%s); following progress by polling /history", exc)
        return None
    ws.settimeout(1.0)
    return ws


def _follow_websocket(ws, prompt_id: str, prompt: Mapping[str, Any], deadline: float) -> None:
    """Log progress until our prompt finishes; returns early (caller polls) if the socket drops."""
    import websocket

    def label(node_id: Any) -> str:
        return f"node {node_id} ({prompt.get(str(node_id), {}).get('class_type', '?')})"

    last_pct: dict[Any, int] = {}
    while time.monotonic() < deadline:
        try:
            message = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except Exception as exc:  # noqa: BLE001 - a dropped socket falls back to polling
            logger.info("websocket closed (%s); polling /history", exc)
            return
        if not isinstance(message, str):
            continue  # binary frames are latent previews
        try:
            event = json.loads(message)
        except json.JSONDecodeError:
            continue
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_start":
            logger.info("prompt %s started", prompt_id)
        elif kind == "execution_cached" and data.get("nodes"):
            logger.info("cached: %s", ", ".join(label(n) for n in data["nodes"]))
        elif kind == "executing" and data.get("node") is None:
            return  # the server is done with our prompt (old servers omit prompt_id here)
        elif kind == "executing":
            logger.info("running %s", label(data["node"]))
        elif kind == "progress":
            value, maximum = data.get("value", 0), data.get("max") or 1
            pct = int(100 * value / maximum)
            node = data.get("node")
            if pct // 10 != last_pct.get(node, -1) // 10 or value == maximum:
                last_pct[node] = pct
                logger.info("%s %d/%d", label(node) if node is not None else "progress", value, maximum)
        elif kind == "executed":
            logger.info("%s done", label(data.get("node")))
        elif kind in ("execution_error", "execution_interrupted"):
            logger.error("%s", format_execution_error(data))
        elif kind == "execution_success":
            return


def _wait_history(server: _Server, prompt_id: str, deadline: float) -> dict[str, Any]:
    while True:
        try:
            entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        except urllib.error.HTTPError as exc:
            raise ClientError(f"/history/{prompt_id} answered HTTP {exc.code}") from None
        # An entry appears once the prompt has finished, successfully or not.
        if entry:
            return entry
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(_POLL_INTERVAL)


def _cancel(server: _Server, prompt_id: str) -> None:
    """Best effort: drop our prompt from the queue, or interrupt it if it is the one running."""
    try:
        queue = server.get_json("/queue")
        if any(item[1] == prompt_id for item in queue.get("queue_pending", [])):
            server.post_json("/queue", {"delete": [prompt_id]})
        elif any(item[1] == prompt_id for item in queue.get("queue_running", [])):
            server.post_json("/interrupt", {"prompt_id": prompt_id})
    except (ClientError, urllib.error.HTTPError, ValueError) as exc:
        logger.warning("could not cancel prompt %s: %s", prompt_id, exc)


def _history_error(entry: Mapping[str, Any]) -> str | None:
    status = entry.get("status") or {}
    if status.get("status_str") != "error" and status.get("completed", True):
        return None
    for message in status.get("messages", []):
        kind, data = message[0], message[1]
        if kind in ("execution_error", "execution_interrupted"):
            return format_execution_error(data)
    return "the prompt did not complete (no error message in /history)"


def _output_refs(entry: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(node_id, {filename, subfolder, type}) for every file listed in the history outputs."""
    refs = []
    for node_id, output in (entry.get("outputs") or {}).items():
        for value in output.values():
            if isinstance(value, list):
                refs.extend((node_id, item) for item in value if isinstance(item, dict) and "filename" in item)
    return refs


def run_workflow(
    prompt: Mapping[str, Any],
    server: str = DEFAULT_SERVER,
    out_dir: str | Path = "outputs/client",
    timeout: float = DEFAULT_TIMEOUT,
    client_id: str | None = None,
) -> list[Path]:
    """Queue ``prompt`` on ``server``, wait for it, download its images into ``out_dir``.

    Returns the written paths in history order. Raises PromptRejected (validation),
    ExecutionFailed (a node raised / interrupted), WorkflowTimeout (after ``timeout``
    seconds; the prompt is then removed from the queue or interrupted) or
    ServerUnreachable.
    """
    srv = _Server(server)
    client_id = client_id or uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    _check_node_types(srv, prompt)

    ws = _open_websocket(srv, client_id)  # opened before queueing so no message is missed
    try:
        prompt_id = _queue(srv, prompt, client_id)
        logger.info("queued prompt %s on %s (%d nodes)", prompt_id, srv.url, len(prompt))
        if ws is not None:
            _follow_websocket(ws, prompt_id, prompt, deadline)
    finally:
        if ws is not None:
            ws.close()
    try:
        entry = _wait_history(srv, prompt_id, deadline)
    except TimeoutError:
        _cancel(srv, prompt_id)
        raise WorkflowTimeout(f"prompt {prompt_id} did not finish within {timeout:g} s; it was cancelled") from None

    error = _history_error(entry)
    if error:
        raise ExecutionFailed(error)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for node_id, ref in _output_refs(entry):
        target = out / Path(ref["filename"]).name
        if target in written:
            target = out / f"{node_id}_{target.name}"
        target.write_bytes(srv.download(ref))
        written.append(target)
        logger.info("saved %s (node %s, %s)", target, node_id, ref.get("type", "output"))
    if not written:
        logger.warning("prompt %s finished but listed no output files", prompt_id)
    return written


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scoft_train.client", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="queue an API-format workflow and download its images")
    run.add_argument("workflow", type=Path, help="API-format prompt JSON (e.g. workflows/api/<name>.json)")
    run.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI base URL (default {DEFAULT_SERVER})")
    run.add_argument("--out", type=Path, default=Path("outputs/client"), help="folder for the downloaded images")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
        help="override an input; NODE is a node id or _meta.title, VALUE is JSON or a plain string (repeatable)",
    )
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the run (default %(default)s)")
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        prompt = apply_overrides(load_prompt(args.workflow), args.overrides)
        paths = run_workflow(prompt, args.server, args.out, timeout=args.timeout)
    except ClientError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        logger.error("stopped by user; the prompt may still be queued on the server")
        return 130
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
