"""Headless client for a running ComfyUI server.

Queues an API-format workflow (``workflows/api/*.json``), follows its progress and
downloads every image it produced::

    python -m scoft_train.client run workflows/api/demo.json \\
        --server http://127.0.0.1:8188 --out outputs/demo \\
        --set "5.steps=20" --set "Prompt.text=a temple at dusk"

``--set NODE.INPUT=VALUE`` overrides one input: NODE is a node id or a node title
(``_meta.title``), VALUE is parsed as JSON when it parses (``20``, ``1.5``,
``true``, ``[1, 0]``) and taken as a string otherwise.

Exit codes: 0 success; 1 the server rejected the prompt (or part of it) or a node
failed; 2 bad command line or workflow file; 3 server unreachable; 4 no sign of
progress for ``--timeout`` seconds.

A prompt the server accepts only in part (HTTP 200, but some output nodes failed
validation and would be dropped) is cancelled and reported, naming each output node
that would not run and why, unless ``--allow-partial`` asks to run the rest.

``--timeout`` is a limit on silence, not on total time: the client waits as long as
the server reports progress (a node starts or finishes, a progress step) and gives up,
cancelling the prompt, after that many seconds without any. While the prompt waits in
the queue behind another one that is running, it keeps waiting.

Function API, used by the CLI and the tests::

    run_workflow(prompt, server, out_dir, timeout=600.0, allow_partial=False) -> list[Path]

Progress comes over the server's websocket (``/ws``) when the ``websocket-client``
package is installed and the socket opens, otherwise by polling ``/history`` and
``/queue``; polling cannot see progress steps, so there ``--timeout`` counts from the
last change of the prompt's place in the queue.
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
DEFAULT_TIMEOUT = 600.0  # seconds without any progress from the server
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


class PromptPartlyRejected(PromptRejected):
    """The server accepted the prompt (HTTP 200) but dropped output nodes that failed validation.

    ``skipped`` holds the ids of the output nodes that would not run."""

    def __init__(self, message: str, skipped: list[str]):
        super().__init__(message)
        self.skipped = skipped


class ExecutionFailed(ClientError):
    """A node raised while the prompt ran, or the run was interrupted."""


class WorkflowTimeout(ClientError):
    """No sign of progress for the silence limit (``timeout``); the prompt was cancelled."""

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


def _node_label(node_id: str, prompt: Mapping[str, Any]) -> str:
    node = prompt.get(str(node_id), {})
    class_type = node.get("class_type", "?")
    title = (node.get("_meta") or {}).get("title")
    return f"node {node_id} ({class_type}" + (f", {title!r})" if title and title != class_type else ")")


def _upstream(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    """`node_id` and every node it reads from, following links ([node_id, slot] inputs)."""
    seen, todo = set(), [str(node_id)]
    while todo:
        current = todo.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        for value in (prompt[current].get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                todo.append(str(value[0]))
    return seen


def skipped_outputs(node_errors: Mapping[str, Any], prompt: Mapping[str, Any],
                    object_info: Mapping[str, Any]) -> dict[str, list[str]]:
    """{output node id: [ids of the failed nodes it depends on]} for a /prompt answer's node_errors.

    ComfyUI lists the dropped outputs of each failed node in `dependent_outputs`; older or other
    servers may not, so outputs (OUTPUT_NODE classes) that read from a failed node count too."""
    skipped: dict[str, list[str]] = {}
    for failed, entry in node_errors.items():
        for output in entry.get("dependent_outputs") or []:
            skipped.setdefault(str(output), []).append(str(failed))
    outputs = [nid for nid, node in prompt.items() if (object_info.get(node["class_type"]) or {}).get("output_node")]
    for output in outputs:
        for failed in node_errors:
            if str(failed) in _upstream(prompt, output) and str(failed) not in skipped.get(output, []):
                skipped.setdefault(output, []).append(str(failed))
    return dict(sorted(skipped.items(), key=lambda item: (len(item[0]), item[0])))


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


def _check_node_types(server: _Server, prompt: Mapping[str, Any]) -> dict[str, Any]:
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
    return known


def _queue(server: _Server, prompt: Mapping[str, Any], client_id: str) -> tuple[str, dict[str, Any]]:
    """Post the prompt; returns its id and the node_errors of a partly accepted prompt (empty if none)."""
    try:
        answer = server.post_json("/prompt", {"prompt": prompt, "client_id": client_id})
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            raise PromptRejected(f"/prompt answered HTTP {exc.code}: {body.strip()[:2000]}") from None
        raise PromptRejected(format_node_errors(parsed, prompt)) from None
    return answer["prompt_id"], answer.get("node_errors") or {}


def _partial_report(node_errors: Mapping[str, Any], prompt: Mapping[str, Any],
                    object_info: Mapping[str, Any]) -> tuple[str, list[str]]:
    skipped = skipped_outputs(node_errors, prompt, object_info)
    lines = [f"{_node_label(output, prompt)} did not run: it depends on "
             + ", ".join(_node_label(failed, prompt) for failed in failed_nodes)
             + ", which failed validation" for output, failed_nodes in skipped.items()]
    if not skipped:
        lines.append("some nodes failed validation, though no output depends on them")
    return "\n".join([*lines, format_node_errors({"node_errors": node_errors}, prompt)]), list(skipped)


class _Silence:
    """The silence limit: how long since the last sign of progress, and what that sign was."""

    def __init__(self, limit: float):
        self.limit = limit
        self.poke("queued")

    def poke(self, what: str) -> None:
        self.last, self.what = time.monotonic(), what

    def expired(self) -> bool:
        return time.monotonic() - self.last > self.limit


def _queue_place(server: _Server, prompt_id: str) -> str | None:
    """'running', 'waiting behind N prompts' (one of them running), 'pending (nothing running)', or None
    (not in the queue any more)."""
    queue = server.get_json("/queue")
    running = [item[1] for item in queue.get("queue_running", [])]
    pending = [item[1] for item in sorted(queue.get("queue_pending", []), key=lambda item: item[0])]
    if prompt_id in running:
        return "running"
    if prompt_id in pending:
        if not running:
            return "pending (nothing running)"
        return f"waiting behind {len(running) + pending.index(prompt_id)} prompts"
    return None


def _check_silence(server: _Server, prompt_id: str, silence: _Silence) -> None:
    """Raise TimeoutError once the silence limit passed, unless the prompt waits behind a running one."""
    if not silence.expired():
        return
    try:
        place = _queue_place(server, prompt_id)
    except (ClientError, urllib.error.HTTPError, ValueError):
        place = None
    if place and place.startswith("waiting behind"):
        logger.info("prompt %s is %s; still waiting", prompt_id, place)
        silence.poke(place)
        return
    raise TimeoutError


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


def _follow_websocket(ws, server: _Server, prompt_id: str, prompt: Mapping[str, Any], silence: _Silence) -> None:
    """Log progress until our prompt finishes; returns early (caller polls) if the socket drops.
    Every message about our prompt resets the silence limit; TimeoutError when it passes."""
    import websocket

    def label(node_id: Any) -> str:
        return f"node {node_id} ({prompt.get(str(node_id), {}).get('class_type', '?')})"

    last_pct: dict[Any, int] = {}
    while True:
        _check_silence(server, prompt_id, silence)
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
        if kind in ("execution_start", "execution_cached", "executing", "progress", "executed"):
            node = data.get("node")
            silence.poke(f"{kind} {label(node)}" if node is not None else kind)
            if kind == "progress":
                silence.what += f" {data.get('value', 0)}/{data.get('max', '?')}"
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


def _wait_history(server: _Server, prompt_id: str, silence: _Silence) -> dict[str, Any]:
    """Poll /history until the prompt's entry appears; a change of its place in /queue counts as progress."""
    place = None
    while True:
        try:
            entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        except urllib.error.HTTPError as exc:
            raise ClientError(f"/history/{prompt_id} answered HTTP {exc.code}") from None
        # An entry appears once the prompt has finished, successfully or not.
        if entry:
            return entry
        try:
            now = _queue_place(server, prompt_id)
        except (urllib.error.HTTPError, ValueError):
            now = place
        if now != place:
            place = now
            silence.poke(f"queue: {now}")
        _check_silence(server, prompt_id, silence)
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


def _silence_message(prompt_id: str, silence: _Silence) -> str:
    return (f"prompt {prompt_id}: no progress from the server for {silence.limit:g} s (last: {silence.what}); it was "
            "cancelled. Raise --timeout if a node may work that long without reporting progress")


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
    allow_partial: bool = False,
) -> list[Path]:
    """Queue ``prompt`` on ``server``, wait for it, download its images into ``out_dir``.

    ``timeout`` is the silence limit: seconds without any progress from the server (a node
    starting or finishing, a progress step), not a limit on the total time.

    Returns the written paths in history order. Raises PromptRejected (validation),
    PromptPartlyRejected (the server dropped some output nodes; the prompt is cancelled unless
    ``allow_partial``), ExecutionFailed (a node raised / interrupted), WorkflowTimeout (no
    progress for ``timeout`` seconds; the prompt is then removed from the queue or interrupted)
    or ServerUnreachable.
    """
    srv = _Server(server)
    client_id = client_id or uuid.uuid4().hex
    object_info = _check_node_types(srv, prompt)

    ws = _open_websocket(srv, client_id)  # opened before queueing so no message is missed
    silence = _Silence(timeout)
    try:
        prompt_id, node_errors = _queue(srv, prompt, client_id)
        logger.info("queued prompt %s on %s (%d nodes)", prompt_id, srv.url, len(prompt))
        if node_errors:
            report, skipped = _partial_report(node_errors, prompt, object_info)
            if not allow_partial:
                _cancel(srv, prompt_id)
                raise PromptPartlyRejected(
                    f"the server accepted only part of the prompt:\n{report}\nprompt {prompt_id} was cancelled; fix "
                    "those inputs, or pass --allow-partial to run the outputs that passed validation", skipped)
            logger.warning("running only part of the prompt (--allow-partial):\n%s", report)
        if ws is not None:
            try:
                _follow_websocket(ws, srv, prompt_id, prompt, silence)
            except TimeoutError:
                _cancel(srv, prompt_id)
                raise WorkflowTimeout(_silence_message(prompt_id, silence)) from None
        else:
            logger.warning("without the websocket, progress steps are not visible: --timeout counts from the last "
                           "change of the prompt's place in the queue (install websocket-client to follow progress)")
    finally:
        if ws is not None:
            ws.close()
    try:
        entry = _wait_history(srv, prompt_id, silence)
    except TimeoutError:
        _cancel(srv, prompt_id)
        raise WorkflowTimeout(_silence_message(prompt_id, silence)) from None

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
    run.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="give up (and cancel the prompt) after this many seconds without any progress from the server: no "
             "node started or finished, no progress step. Not a limit on the total time: a run that keeps "
             "reporting progress is waited for however long it takes (default %(default)g)",
    )
    run.add_argument(
        "--allow-partial", action="store_true",
        help="when the server accepts the prompt but drops output nodes that failed validation, run the rest "
             "(default: cancel it and exit 1, naming each output node that would not run)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        prompt = apply_overrides(load_prompt(args.workflow), args.overrides)
        paths = run_workflow(prompt, args.server, args.out, timeout=args.timeout, allow_partial=args.allow_partial)
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
