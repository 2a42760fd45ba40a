"""The browser page and its HTTP API (aiohttp), served by the edge server's own process beside gRPC.

``splitedge serve --web-port P`` serves, on ``--host:P``:

* ``/`` and ``/static/...``: the page, built by ``make web`` into ``edge_server/web/dist`` (esbuild over
  ``edge_server/web/src``, with onnxruntime-web's WebAssembly beside it: the page loads nothing from elsewhere).
  Without the build, ``/`` answers 503 with a page that says to run ``make web``.
* ``/api/config``: the model, which modes this server can take from a page, and where the head is;
* ``/api/bundle/manifest.json`` and ``/api/bundle/head.onnx``: the exported head that split mode runs in the page
  (``make web`` exports it into ``edge_server/web/model``; ``--web-bundle`` names another);
* ``POST /api/offer``: WebRTC signalling, one JSON offer in, the answer out (:mod:`edge_server.webrtc`).

The same security as gRPC applies: TLS with ``--tls-cert/--tls-key`` (and ``--client-ca``), plain text only on
loopback unless ``--insecure``, and with ``--token-file`` every ``/api`` call needs ``Authorization: Bearer
TOKEN`` (the page takes it from its URL's fragment, ``#token=...``, or asks). The page's code itself is public.

Split mode needs a served model whose codec the page can run: the bundle's (8-bit; the entropy coder has no
JavaScript port) at the bundle's split point. The served model and the bundle are compared at start, and
``/api/config`` says why split mode is off when they differ (docs/browser.md).
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Callable

from edge_server.auth import OPEN, Grant
from edge_server.metrics import log_event
from edge_server.registry import ModelRegistry
from edge_server.server import EdgeServer, ServerOptions, serve
from edge_server.validation import ModelLimits

if TYPE_CHECKING:
    from aiohttp import web as aioweb

__all__ = ["DEFAULT_BUNDLE", "DEFAULT_DIST", "WebOptions", "WebServer", "web_missing", "serve_with_web"]

HERE = Path(__file__).resolve().parent / "web"
DEFAULT_DIST = HERE / "dist"
DEFAULT_BUNDLE = HERE / "model"
MAX_OFFER_BYTES = 64 * 1024
log = logging.getLogger("splitedge.web")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".wasm": "application/wasm", ".map": "application/json", ".json": "application/json"}
# The page loads only from this server; 'wasm-unsafe-eval' lets onnxruntime-web compile its WebAssembly.
_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'")
_NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>splitedge: page not built</title></head>
<body><h1>The splitedge page is not built</h1><p>This server serves the page from <code>{dist}</code>, which has no
<code>index.html</code>. Build it with <code>make web</code> (npm and esbuild; docs/browser.md), then reload.</p>
</body></html>"""


def web_missing() -> str | None:
    """Why the web endpoint cannot start here (aiohttp or aiortc not installed), or None."""
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as exc:
        return f"--web-port needs {exc.name}: pip install 'splitedge[web]'"
    return None


@dataclass(frozen=True)
class WebOptions:
    """``port``: where the page is served (0: any free); ``ice_hosts``: addresses for ICE host candidates
    (None: the server's ``--host`` when it is one address, else every non-loopback one)."""

    port: int = 8443
    dist: Path = DEFAULT_DIST
    bundle: Path = DEFAULT_BUNDLE
    ice_hosts: tuple[str, ...] | None = None
    max_peers: int = 8
    score_threshold: float = 0.5


@dataclass
class _Split:
    """Split mode as this server offers it: on with a bundle that fits the served model, else off and why."""

    available: bool
    reason: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    bundle: Path | None = None


def split_mode(bundle: Path, registry: ModelRegistry) -> tuple[str | None, _Split]:
    """The model the page uses (the bundle's when served, else the first served) and whether split mode can run."""
    from split.bundle import BundleError, load_manifest

    first = registry.names[0]
    try:
        manifest = load_manifest(bundle, roles=("head",))
    except BundleError as exc:
        return first, _Split(False, f"no head bundle ({exc}); run `make web`")
    served = registry.get(manifest.get("model", ""))
    if served is None:
        return first, _Split(False, f"the bundle is for {manifest.get('model')!r}, which this server does not serve")
    limits = ModelLimits.of(served.model)
    wire = manifest["split"]["wire_shape"]
    mismatch = [f"{what} {mine!r} (bundle {theirs!r})" for what, mine, theirs in (
        ("codec", limits.codec, manifest["codec"]["name"]), ("split point", limits.split_point, manifest["split"]["point"]),
        ("wire channels", limits.wire_channels, wire[1]),
        ("bottleneck digest", served.model.bottleneck_digest(), manifest["split"].get("bottleneck_digest") or
         served.model.bottleneck_digest()))
        if mine != theirs]
    if mismatch:
        found = re.search(r"checkpoint (\S+)", manifest.get("weights") or "")
        fix = f"serve --checkpoint {found.group(1)}" if found else "serve the bundle's checkpoint"
        return served.model.name, _Split(False, "the served model differs from the page's head: " + ", ".join(mismatch)
                                         + f"; {fix} (docs/browser.md)")
    return served.model.name, _Split(True, manifest=manifest, bundle=Path(bundle).resolve())


class WebServer:
    """The page and API of one :class:`EdgeServer`: ``await start()`` returns the bound port, ``await stop()``."""

    def __init__(self, edge: EdgeServer, options: ServerOptions, web: WebOptions) -> None:
        from edge_server.webrtc import WebRtcEndpoint, restrict_host_candidates

        self.edge, self.options, self.web = edge, options, web
        self.tokens = edge.servicer.tokens
        self.model, self.split = split_mode(web.bundle, edge.servicer.registry)
        restrict_host_candidates(web.ice_hosts if web.ice_hosts is not None else _ice_default(options.host))
        self.rtc = WebRtcEndpoint(edge.servicer, self.model, web.max_peers)
        self.port = 0
        self._runner: Any = None

    def app(self) -> aioweb.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[_security_headers()])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{path:.+}", self.static)
        app.router.add_get("/favicon.ico", _no_content)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/bundle/{name}", self.bundle)
        app.router.add_post("/api/offer", self.offer)
        return app

    async def start(self) -> int:
        from aiohttp import web

        for noisy in ("aioice", "aiortc"):  # a line per ICE check and per RTCP packet at INFO
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.web.port, ssl_context=self._tls())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log_event("web_listening", host=self.options.host, port=self.port, tls=self.options.tls, model=self.model,
                  split=self.split.available, split_reason=self.split.reason, built=self.built)
        return self.port

    async def stop(self) -> None:
        await self.rtc.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def built(self) -> bool:
        return (self.web.dist / "index.html").is_file()

    @property
    def url(self) -> str:
        scheme = "https" if self.options.tls else "http"
        host = self.options.host if ":" not in self.options.host else f"[{self.options.host}]"
        return f"{scheme}://{host}:{self.port}/"

    def _tls(self) -> ssl.SSLContext | None:
        o = self.options
        if not o.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(o.tls_cert, o.tls_key)
        if o.client_ca:
            context.load_verify_locations(o.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- handlers ----------------------------------------------------------------------------
    async def index(self, request: aioweb.Request) -> aioweb.StreamResponse:
        from aiohttp import web

        if not self.built:
            return web.Response(status=503, text=_NOT_BUILT.format(dist=self.web.dist), content_type="text/html")
        return _file(self.web.dist / "index.html")

    async def static(self, request: aioweb.Request) -> aioweb.StreamResponse:
        return _file(_inside(self.web.dist, request.match_info["path"]))

    async def config(self, request: aioweb.Request) -> aioweb.StreamResponse:
        from aiohttp import web

        self._grant(request)
        served = self.edge.servicer.registry.get(self.model)
        classes = self.split.manifest.get("classes") or {str(k): v for k, v in (served.model.classes or {}).items()}
        split = {"available": self.split.available, "reason": self.split.reason}
        return web.json_response({
            "model": self.model, "family": served.model.family, "weights": served.weights, "classes": classes,
            "score_threshold": self.web.score_threshold,
            "modes": {"offload": {"available": True, "reason": ""}, "split": split},
            "bundle": {"manifest": "/api/bundle/manifest.json", "head": "/api/bundle/head.onnx"},
        })

    async def bundle(self, request: aioweb.Request) -> aioweb.StreamResponse:
        from aiohttp import web

        self._grant(request)
        if not self.split.available:
            raise web.HTTPNotFound(text=f"split mode is off on this server: {self.split.reason}")
        name = request.match_info["name"]
        files = {"manifest.json": "manifest.json", "head.onnx": self.split.manifest["files"]["head"]["path"]}
        if name not in files:
            raise web.HTTPNotFound(text=f"the bundle serves {', '.join(files)}")
        return _file(_inside(self.split.bundle, files[name]))

    async def offer(self, request: aioweb.Request) -> aioweb.StreamResponse:
        from aiohttp import web

        from edge_server.webrtc import PeerRefused

        grant = self._grant(request)
        try:
            body = await request.json()
            sdp, kind, mode = body["sdp"], body.get("type", "offer"), body.get("mode", "offload")
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='expected JSON {"sdp": ..., "type": "offer", "mode": "offload"|"split"}')
        if kind != "offer" or mode not in ("offload", "split") or not isinstance(sdp, str):
            raise web.HTTPBadRequest(text='expected type "offer" and mode "offload" or "split"')
        if mode == "split" and not self.split.available:
            raise web.HTTPConflict(text=f"split mode is off on this server: {self.split.reason}")
        client = {"client": f"web:{request.remote}", "token": grant.label}
        try:
            answer_sdp, answer_type = await self.rtc.answer(sdp, mode, grant, client)
        except PeerRefused as exc:
            raise _status(exc.status, str(exc)) from None
        return web.json_response({"sdp": answer_sdp, "type": answer_type})

    def _grant(self, request: aioweb.Request) -> Grant:
        """The request's grant; 401 without a known bearer token, 403 when it does not name the page's model."""
        from aiohttp import web

        if self.edge.servicer.draining:
            raise web.HTTPServiceUnavailable(text="the server is draining")
        if self.tokens is None:
            return OPEN
        grant = self.tokens.grant([("authorization", request.headers.get("Authorization", ""))])
        if grant is None:
            raise web.HTTPUnauthorized(text="missing or unknown bearer token (header 'Authorization: Bearer TOKEN')",
                                       headers={"WWW-Authenticate": "Bearer"})
        if not grant.allows(self.model):
            raise web.HTTPForbidden(text=f"this token may not use model {self.model!r}")
        return grant


async def _no_content(request: aioweb.Request) -> aioweb.Response:
    from aiohttp import web

    return web.Response(status=204)


def _status(status: int, text: str) -> aioweb.HTTPException:
    from aiohttp import web

    kinds = {400: web.HTTPBadRequest, 409: web.HTTPConflict, 503: web.HTTPServiceUnavailable}
    return kinds.get(status, web.HTTPInternalServerError)(text=text)


def _inside(root: Path, relative: str) -> Path:
    """``root / relative`` when it is a file inside ``root`` (no ``..`` out of it), else 404."""
    from aiohttp import web

    base = Path(root).resolve()
    path = (base / relative).resolve()
    if base not in path.parents or not path.is_file():
        raise web.HTTPNotFound(text=f"no such file: {relative}")
    return path


def _file(path: Path) -> aioweb.FileResponse:
    from aiohttp import web

    return web.FileResponse(path, headers={"Content-Type": _TYPES.get(path.suffix, "application/octet-stream")})


def _ice_default(host: str) -> tuple[str, ...] | None:
    """ICE host candidates on the address the server listens on, when it is one address; all of them for 0.0.0.0."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return ("127.0.0.1",) if host == "localhost" else (host.strip("[]"),)


def _security_headers():
    """A middleware that adds the CSP and the other headers to every response, errors included."""
    from aiohttp import web

    @web.middleware
    async def headers(request, handler):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return headers


async def serve_with_web(registry: ModelRegistry, options: ServerOptions, web: WebOptions,
                         ready: Callable[[int, int | None], None] | None = None,
                         failed: dict[str, str] | None = None,
                         web_ready: Callable[[WebServer], None] | None = None) -> None:
    """`edge_server.server.serve` with the page beside it: serve until SIGINT/SIGTERM, then close the page's
    peers, drain and stop."""

    @contextlib.asynccontextmanager
    async def page(server: EdgeServer) -> AsyncIterator[None]:
        started = WebServer(server, options, web)
        await started.start()
        try:
            if web_ready is not None:
                web_ready(started)
            yield
        finally:
            await started.stop()

    await serve(registry, options, ready, failed, beside=page)
