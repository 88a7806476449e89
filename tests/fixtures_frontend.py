"""A test harness that serves the real ComfyUI frontend over the stub executor (127.0.0.1 only).

Serves ``comfyui_frontend_package``'s static files and the routes that frontend calls at start-up
and on a run, the way ComfyUI 0.3.64's server answers them: ``/object_info`` (the recorded core
schemas of ``unet_core/graph/data`` plus the pack's node classes), ``/settings``, ``/users``,
``/userdata`` (kept in memory), ``/extensions`` (the pack's ``web/`` under
``/extensions/unet_lab/``), ``/workflow_templates`` (our ``workflows/``), ``/prompt`` (runs the
prompt through ``Executor`` in a worker thread), ``/history``, ``/queue``, ``/view`` (the host's
output and temp folders), ``/ws`` (``status``, ``executing``, ``executed``, ``execution_*``
messages), and the pack's own LoRA family route. Every route is also served under ``/api`` as
ComfyUI does. Anything else answers 404 and is recorded in ``missing`` so a test can fail on it.

Not emulated: the model manager, uploads, interrupts, previews during sampling, progress
messages, the queue beyond one run at a time, multiple users, and every core node that needs a
ComfyUI host (the executor refuses those, and the run reports ``execution_error``).

This is a test harness; it is not a ComfyUI replacement.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pack_support import REPO_ROOT

log = logging.getLogger(__name__)

PACK_URL = "/extensions/unet_lab"
WEB_DIR = REPO_ROOT / "web"
WORKFLOW_DIR = REPO_ROOT / "workflows"
CORE_SCHEMAS = REPO_ROOT / "unet_core" / "graph" / "data" / "core_object_info.json.gz"
DISPLAY_NAMES = REPO_ROOT / "tests" / "web" / "data" / "core_display_names.json"
FRONTEND_VERSION = "1.27.10"
# Settings a returning user has: no first-run template browser, no new-user tour.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": FRONTEND_VERSION,
            "Comfy.Release.Version": FRONTEND_VERSION, "Comfy.Release.Status": "skipped",
            "Comfy.Release.Timestamp": 0}


def frontend_root() -> Path | None:
    """The static folder of the installed ``comfyui_frontend_package`` wheel, or None."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).parent / "static"
    return root if (root / "index.html").is_file() else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def pack_object_info() -> dict[str, dict[str, Any]]:
    """``/object_info`` entries of the pack's registered nodes, as ComfyUI's ``node_info`` builds them."""
    import unet_lab

    info = {}
    for name, cls in unet_lab.NODE_CLASS_MAPPINGS.items():
        inputs = _jsonable(cls.INPUT_TYPES())
        outputs = _jsonable(cls.RETURN_TYPES)
        info[name] = {
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items() if isinstance(v, dict)},
            "output": outputs, "output_is_list": [False] * len(outputs),
            "output_name": _jsonable(getattr(cls, "RETURN_NAMES", None) or outputs),
            "output_tooltips": _jsonable(getattr(cls, "OUTPUT_TOOLTIPS", [])),
            "name": name, "display_name": unet_lab.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            "description": getattr(cls, "DESCRIPTION", ""), "python_module": "custom_nodes.unet_lab",
            "category": cls.CATEGORY, "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return info


def core_object_info(file_values: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The recorded core schemas with names and display names; file combos also list ``file_values``
    (as a ComfyUI with those files would), so the page shows the workflows' picks as present."""
    with gzip.open(CORE_SCHEMAS, "rt", encoding="utf-8") as handle:
        nodes = json.load(handle)["nodes"]
    names = json.loads(DISPLAY_NAMES.read_text(encoding="utf-8")) if DISPLAY_NAMES.is_file() else {}
    info = {}
    for name, entry in nodes.items():
        entry = json.loads(json.dumps(entry))
        entry.update(name=name, display_name=names.get(name, name), description="")
        for section in entry.get("input", {}).values():
            for spec in section.values():
                if isinstance(spec, list) and spec and isinstance(spec[0], list) and len(spec) > 1 \
                        and isinstance(spec[1], dict) and spec[1].pop("file_list", False):
                    spec[0] = sorted(set(spec[0]) | set(file_values))
        info[name] = entry
    return info


@dataclass
class HarnessState:
    """What the server holds between requests and what it saw (read by the tests)."""

    host: Any
    object_info: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=lambda: dict(SETTINGS))
    userdata: dict[str, bytes] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    sockets: list[Any] = field(default_factory=list)
    run_done: threading.Event = field(default_factory=threading.Event)


def _extensions(static: Path) -> list[str]:
    own = ["/" + p.relative_to(static).as_posix() for p in sorted((static / "extensions").rglob("*.js"))]
    return own + [f"{PACK_URL}/{p.relative_to(WEB_DIR).as_posix()}" for p in sorted(WEB_DIR.rglob("*.js"))]


def build_app(state: HarnessState, static: Path) -> Any:
    """The aiohttp application: API routes (at ``/`` and ``/api``), the pack's web files, the frontend."""
    from aiohttp import WSMsgType, web

    from unet_lab.nodes import lora_family_route

    routes = web.RouteTableDef()

    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        state.sockets.append(ws)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT and '"feature_flags"' in message.data:
                    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": False}})
        finally:
            state.sockets.remove(ws)
        return ws

    @routes.get("/object_info")
    async def object_info(request: web.Request) -> web.Response:
        return web.json_response(state.object_info)

    @routes.get("/settings")
    async def settings(request: web.Request) -> web.Response:
        return web.json_response(state.settings)

    @routes.post("/settings")
    async def settings_post(request: web.Request) -> web.Response:
        state.settings.update(await request.json())
        return web.Response(status=200)

    @routes.get("/settings/{id}")
    async def setting(request: web.Request) -> web.Response:
        return web.json_response(state.settings.get(request.match_info["id"]))

    @routes.post("/settings/{id}")
    async def setting_post(request: web.Request) -> web.Response:
        state.settings[request.match_info["id"]] = await request.json()
        return web.Response(status=200)

    @routes.get("/users")
    async def users(request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": True})

    @routes.get("/userdata")
    async def userdata_list(request: web.Request) -> web.Response:
        folder = request.rel_url.query.get("dir", "").strip("/") + "/"
        return web.json_response([k[len(folder):] for k in state.userdata if k.startswith(folder)])

    @routes.get("/v2/userdata")
    async def userdata_list_v2(request: web.Request) -> web.Response:
        return web.json_response([])

    @routes.get("/userdata/{file}")
    async def userdata_get(request: web.Request) -> web.Response:
        body = state.userdata.get(request.match_info["file"])
        return web.Response(status=404) if body is None else web.Response(body=body)

    @routes.post("/userdata/{file}")
    async def userdata_post(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        state.userdata[name] = await request.read()
        return web.json_response({"path": name, "size": len(state.userdata[name])})

    @routes.get("/extensions")
    async def extensions(request: web.Request) -> web.Response:
        return web.json_response(_extensions(static))

    @routes.get("/workflow_templates")
    async def templates(request: web.Request) -> web.Response:
        return web.json_response({"unet_lab": sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))})

    @routes.get("/workflow_templates/unet_lab/{file}")
    async def template(request: web.Request) -> web.Response:
        path = WORKFLOW_DIR / Path(request.match_info["file"]).name
        return web.FileResponse(path) if path.is_file() else web.Response(status=404)

    for path, body in (("/embeddings", []), ("/models", []), ("/experiment/models", []), ("/i18n", {}),
                       ("/queue", {"queue_running": [], "queue_pending": []}),
                       ("/system_stats", {"system": {"os": "posix", "comfyui_version": "0.3.64",
                                                     "python_version": "3", "pytorch_version": "2",
                                                     "embedded_python": False, "argv": [], "ram_total": 0,
                                                     "ram_free": 0, "required_frontend_version": FRONTEND_VERSION},
                                          "devices": []})):
        routes.get(path)(_json_handler(body))

    @routes.get("/history")
    async def history(request: web.Request) -> web.Response:
        return web.json_response(state.history)

    @routes.get("/history/{id}")
    async def history_one(request: web.Request) -> web.Response:
        entry = state.history.get(request.match_info["id"])
        return web.json_response({request.match_info["id"]: entry} if entry else {})

    @routes.post("/prompt")
    async def prompt(request: web.Request) -> web.Response:
        body = await request.json()
        prompt_id = uuid.uuid4().hex
        state.prompts.append(body)
        state.run_done.clear()
        asyncio.get_running_loop().create_task(_run(state, prompt_id, body["prompt"]))
        return web.json_response({"prompt_id": prompt_id, "number": len(state.prompts), "node_errors": {}})

    @routes.get("/view")
    async def view(request: web.Request) -> web.Response:
        query = request.rel_url.query
        base = {"output": state.host.output_directory(), "temp": state.host.temp_directory(),
                "input": state.host.input_directory()}.get(query.get("type", "output"))
        target = (Path(base) / query.get("subfolder", "") / Path(query.get("filename", "")).name).resolve()
        if base is None or Path(base).resolve() not in target.parents or not target.is_file():
            return web.Response(status=404)
        return web.FileResponse(target)

    lora_family_route.register(routes)

    app = web.Application()
    api = web.RouteTableDef()
    for route in routes:
        api.route(route.method, "/api" + route.path)(route.handler)
    app.add_routes(routes)
    app.add_routes(api)
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html")

    async def user_css(request: web.Request) -> web.Response:  # ComfyUI serves the user's CSS here (none)
        return web.Response(text="", content_type="text/css")

    app.router.add_get("/", index)
    app.router.add_get("/user.css", user_css)
    app.router.add_static(PACK_URL, WEB_DIR)
    app.router.add_static("/", static)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.requests.append(request.path_qs)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            state.missing.append(request.path_qs)
            raise
        if response.status == 404:
            state.missing.append(request.path_qs)
        return response

    app.middlewares.append(record)
    return app


def _json_handler(body: Any) -> Any:
    from aiohttp import web

    async def respond(request: web.Request) -> web.Response:
        return web.json_response(body)

    return respond


async def _send(state: HarnessState, kind: str, data: dict[str, Any]) -> None:
    for ws in list(state.sockets):
        await ws.send_json({"type": kind, "data": data})


async def _run(state: HarnessState, prompt_id: str, prompt: dict[str, Any]) -> None:
    """Run a prompt through the stub executor and tell the page as ComfyUI's server does."""
    from unet_lab.nodes.host import use_host
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor, format_error

    loop = asyncio.get_running_loop()
    await _send(state, "execution_start", {"prompt_id": prompt_id})

    def work() -> Any:
        with use_host(state.host):
            return Executor(node_classes()).run(prompt)

    try:
        result = await loop.run_in_executor(None, work)
    except Exception as error:  # the page shows it; the test reads it from history
        log.info("harness run failed: %s", format_error(error))
        state.history[prompt_id] = {"prompt": prompt, "outputs": {}, "status": {"status_str": "error",
                                                                                "messages": [format_error(error)]}}
        await _send(state, "execution_error", {"prompt_id": prompt_id, "node_id": "", "node_type": "",
                                               "exception_message": format_error(error),
                                               "exception_type": type(error).__name__, "traceback": []})
    else:
        for node_id, ui in result.outputs.items():
            await _send(state, "executed", {"node": node_id, "display_node": node_id, "output": _jsonable(ui),
                                            "prompt_id": prompt_id})
        state.history[prompt_id] = {"prompt": prompt, "outputs": _jsonable(result.outputs),
                                    "status": {"status_str": "success", "completed": True, "messages": []}}
        await _send(state, "execution_success", {"prompt_id": prompt_id})
    await _send(state, "executing", {"node": None, "prompt_id": prompt_id})
    await _send(state, "status", {"status": {"exec_info": {"queue_remaining": 0}}})
    state.run_done.set()


class FrontendServer:
    """Runs ``build_app`` on 127.0.0.1 (a free port) in a background thread; ``url`` while running."""

    def __init__(self, state: HarnessState, static: Path) -> None:
        self.state = state
        self.static = static
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: Any = None

    def __enter__(self) -> FrontendServer:
        from aiohttp import web

        self._thread.start()

        async def start() -> str:
            self._runner = web.AppRunner(build_app(self.state, self.static), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            return f"http://127.0.0.1:{port}"

        self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for ws in list(self.state.sockets):
                await ws.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def iter_widget_files(workflows: list[dict[str, Any]]) -> Iterator[str]:
    """Every string widget value of the workflows that names a file (model, image)."""
    suffixes = (".safetensors", ".png", ".jpg", ".tif", ".tiff", ".ckpt", ".pth")
    for workflow in workflows:
        for node in workflow["nodes"]:
            for value in node.get("widgets_values") or []:
                if isinstance(value, str) and value.endswith(suffixes):
                    yield value
