"""`splitedge serve`: build the named recipes and serve them over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from functools import partial
from pathlib import Path

from split.cli_util import fail
from split.recipes import build, default_recipe, get_recipe
from split.weights import WeightsError

from edge_server.auth import AuthError, check_listen
from edge_server.metrics import log_event, setup_logging
from edge_server.registry import ModelRegistry, ServedModel
from edge_server.scheduler import BatchOptions, default_workers
from edge_server.server import DEFAULT_MAX_MESSAGE_BYTES, ServerOptions, serve
from edge_server.service import Limits

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitedge serve", description="Run the splitedge edge server.")
    p.add_argument("--model", action="append", metavar="NAME",
                   help=f"recipe to serve (repeatable; default {default_recipe().name}); see `splitedge models`")
    p.add_argument("--host", default="127.0.0.1", help="off loopback: needs --tls-cert/--tls-key, or --insecure")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed on start)")
    p.add_argument("--checkpoint", metavar="FILE", help="splitedge checkpoint; applied to the model it names")
    p.add_argument("--weights", metavar="ENUM", help="torchvision weights enum (e.g. DEFAULT, COCO_V1), from the local cache")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20)
    p.add_argument("--no-warmup", action="store_true", help="skip the start-up frame that seeds latency medians")
    p.add_argument("--plain-model", action="store_true",
                   help="serve the network as built: no BatchNorm folded, no channels-last (outputs bit-equal to "
                        "SplitModel.decode; the edge's form served 1.1-1.5x its frames/s here, docs/scheduler.md)")
    sec = p.add_argument_group("security")
    sec.add_argument("--tls-cert", metavar="F", help="PEM certificate chain: serve TLS")
    sec.add_argument("--tls-key", metavar="F", help="PEM private key of --tls-cert")
    sec.add_argument("--client-ca", metavar="F", help="PEM CA: clients must present a certificate it signed (mutual TLS)")
    sec.add_argument("--token-file", metavar="F", help="bearer tokens, one a line: TOKEN [model,model...]")
    sec.add_argument("--insecure", action="store_true", help="allow plain text on a non-loopback address")
    lim = p.add_argument_group("limits")
    d = Limits()
    lim.add_argument("--max-streams", type=int, default=d.max_streams, help="concurrent Infer streams, server-wide")
    lim.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="frames queued or computing, server-wide")
    lim.add_argument("--max-stream-in-flight", type=int, default=d.max_stream_in_flight,
                     help="frames one stream may have read and not yet answered")
    lim.add_argument("--stream-idle-s", type=float, default=d.stream_idle_s, help="close a stream silent this long")
    lim.add_argument("--keepalive-s", type=float, default=ServerOptions.keepalive_s, help="ping quiet connections this often")
    lim.add_argument("--drain-s", type=float, default=ServerOptions.drain_s, help="on SIGTERM: longest wait for frames in flight")
    bat = p.add_argument_group("scheduling", "frames from every stream are batched per model on a pool of "
                               "workers; defaults measured by `bench/throughput.py --curve`")
    b = BatchOptions()
    bat.add_argument("--batch-size", type=int, default=b.batch_size, help="most frames per batch; 1: no batching")
    bat.add_argument("--batch-wait-ms", type=float, default=b.batch_wait_ms,
                     help="longest a frame waits for others to join its batch while a worker is free")
    bat.add_argument("--workers", type=int, default=b.workers,
                     help="compute threads; 0: cores / torch threads per worker (OMP_NUM_THREADS); "
                          "with --backend ray: per replica, 0: cores / replicas")
    bat.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess",
                     help="where tails run: this process's workers, or Ray Serve deployments (docs/ray.md; "
                          "pip install 'splitedge[ray]'; a local Ray cluster unless RAY_ADDRESS names one)")
    bat.add_argument("--replicas", type=int, metavar="N", help="with --backend ray: replicas per model (default 1)")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on --host:P (0: any free port)")
    web = p.add_argument_group("browser page", "the page and its WebRTC endpoint, on --host beside gRPC, with the same "
                               "TLS and tokens (docs/browser.md; pip install 'splitedge[web]'; build it: make web)")
    web.add_argument("--web-port", type=int, metavar="P", help="serve the page on --host:P (0: any free port)")
    web.add_argument("--web-bundle", metavar="DIR", help="the ONNX bundle whose head split mode runs in the page "
                     "(default: edge_server/web/model, written by `make web`)")
    web.add_argument("--web-ice-host", action="append", metavar="ADDR",
                     help="address for the server's ICE host candidates (repeatable; default: --host, or every "
                          "non-loopback address when --host is 0.0.0.0)")
    web.add_argument("--web-max-peers", type=int, default=8, metavar="N", help="browser sessions at once")
    return p


_fail = partial(fail, "splitedge serve")


def _options(args) -> ServerOptions:
    for name in ("max_streams", "max_in_flight", "max_stream_in_flight"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        raise ValueError("--client-ca needs --tls-cert and --tls-key")
    if args.replicas is not None and args.backend != "ray":
        raise ValueError("--replicas needs --backend ray")
    if args.replicas is not None and not 1 <= args.replicas <= 64:
        raise ValueError("--replicas must be in 1..64")
    if args.web_port is None and (args.web_bundle or args.web_ice_host):
        raise ValueError("--web-bundle and --web-ice-host need --web-port")
    if args.web_max_peers < 1:
        raise ValueError("--web-max-peers must be at least 1")
    limits = Limits(args.max_streams, args.max_in_flight, args.stream_idle_s, args.max_stream_in_flight)
    batching = BatchOptions(args.batch_size, args.batch_wait_ms, args.workers).check()
    return ServerOptions(host=args.host, port=args.port, max_message_bytes=int(args.max_message_mb * 2**20),
                         tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca,
                         token_file=args.token_file, insecure=args.insecure, limits=limits, batching=batching,
                         keepalive_s=args.keepalive_s, drain_s=args.drain_s, metrics_port=args.metrics_port)


def _load(names: list[str], args) -> tuple[list[ServedModel], dict[str, str]]:
    """Build each recipe; with several, one that fails to load is reported (health NOT_SERVING), not fatal."""
    served, failed, _ = _load_with_checkpoints(names, args)
    return served, failed


def _load_with_checkpoints(names: list[str], args) -> tuple[list[ServedModel], dict[str, str], dict[str, str | None]]:
    """`_load`, and each served recipe's checkpoint (what a Ray replica builds it from)."""
    recipes = [get_recipe(n) for n in names]
    ckpt_recipe = None
    if args.checkpoint:
        from split.weights import load_checkpoint

        ckpt_recipe = load_checkpoint(args.checkpoint).get("recipe", names[0])
        if ckpt_recipe not in names:
            raise WeightsError(f"checkpoint {args.checkpoint} is for {ckpt_recipe!r}, which is not served ({', '.join(names)})")
    served, failed, checkpoints = [], {}, {}
    for r in recipes:
        ckpt = args.checkpoint if r.name == ckpt_recipe else None
        try:
            model, source = build(r.name, weights=args.weights, checkpoint=ckpt)
            s = ServedModel(model, source, r.builder, edge_form=not args.plain_model)
            if not args.no_warmup:
                s.warm_up()
        except (WeightsError, RuntimeError, ValueError, OSError) as exc:
            if len(recipes) == 1:
                raise WeightsError(str(exc)) from None
            failed[r.name] = f"{type(exc).__name__}: {exc}"
            log_event("model_failed", logging.ERROR, model=r.name, error=failed[r.name])
            continue
        served.append(s)
        checkpoints[r.name] = ckpt
    if not served:
        raise WeightsError("no model could be loaded: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return served, failed, checkpoints


def _scheduling(b: BatchOptions) -> str:
    batching = f"batches of up to {b.batch_size} frames, {b.batch_wait_ms:g} ms wait" if b.batch_size > 1 else "no batching"
    return f"{batching}; {b.workers or default_workers()} workers"


def _ray_backend(served: list[ServedModel], checkpoints: dict[str, str | None], args, options: ServerOptions):
    """The served models as Ray Serve deployments, started (replicas built and warmed up)."""
    from edge_server.ray_backend import ModelSpec, RayBackend, RayOptions

    specs = [ModelSpec(s.model.name, args.weights, os.path.abspath(checkpoints[s.model.name])
                       if checkpoints[s.model.name] else None, edge_form=not args.plain_model) for s in served]
    return RayBackend(specs, RayOptions(replicas=args.replicas or 1, threads=options.batching.workers),
                      options.batching).start()


def main(command: str, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        options = _options(args)
        check_listen(options.host, options.tls, options.insecure)
    except (ValueError, AuthError) as exc:
        return _fail(str(exc))
    if args.backend == "ray":
        from edge_server.ray_backend import ray_missing

        if (missing := ray_missing()) is not None:
            return _fail(missing)
    if args.web_port is not None:
        from edge_server.web import web_missing

        if (missing := web_missing()) is not None:
            return _fail(missing)
    names = args.model or [default_recipe().name]
    try:
        served, failed, checkpoints = _load_with_checkpoints(names, args)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    except WeightsError as exc:
        return _fail(str(exc))
    for s in served:
        note = "  (RANDOM weights: detections are meaningless)" if s.weights.startswith("random") else ""
        med = ", ".join(f"{k} {v:.1f} ms" for k, v in s.medians().items())
        print(f"serving {s.model.name}: weights {s.weights}; split at {s.model.at}; {med}{note}", flush=True)
    for name, why in failed.items():
        print(f"NOT serving {name}: {why} (health: NOT_SERVING)", flush=True)
    try:
        backend = _ray_backend(served, checkpoints, args, options) if args.backend == "ray" else None
    except RuntimeError as exc:  # RayBackendError: the cluster or a deployment did not start
        return _fail(f"--backend ray: {exc}")
    try:
        return _serve(served, failed, options, args, backend)
    finally:
        if backend is not None:
            backend.close()


def _serve(served: list[ServedModel], failed: dict[str, str], options: ServerOptions, args, backend=None) -> int:
    """Serve until SIGINT/SIGTERM; with a Ray backend, batches compute on its deployments."""
    if backend is not None:
        served, options = backend.served(served), backend.server_options(options)
    scheduling = backend.describe() if backend is not None else _scheduling(options.batching)
    print(f"scheduling: {scheduling}; {options.limits.max_stream_in_flight} frames in flight per stream", flush=True)

    def ready(port: int, metrics_port: int | None) -> None:
        scheme = "TLS" if options.tls else "plain text"
        metrics = f"; metrics on {args.host}:{metrics_port}/metrics" if metrics_port is not None else ""
        print(f"listening on {args.host}:{port} ({scheme}{metrics})", flush=True)

    try:
        if args.web_port is None:
            asyncio.run(serve(ModelRegistry(served), options, ready, failed))
        else:
            asyncio.run(_serve_web(ModelRegistry(served), options, args, ready, failed))
    except (OSError, AuthError, ValueError) as exc:
        return _fail(str(exc))
    return 0


async def _serve_web(registry: ModelRegistry, options: ServerOptions, args, ready, failed: dict[str, str]) -> None:
    """`serve` with the browser page beside gRPC (edge_server/web.py)."""
    from edge_server.web import DEFAULT_BUNDLE, WebOptions, serve_with_web

    web = WebOptions(port=args.web_port, bundle=Path(args.web_bundle) if args.web_bundle else DEFAULT_BUNDLE,
                     ice_hosts=tuple(args.web_ice_host) if args.web_ice_host else None, max_peers=args.web_max_peers)

    def web_ready(page) -> None:
        split = "available" if page.split.available else f"off: {page.split.reason}"
        built = "" if page.built else "; the page is not built: run `make web`"
        print(f"web page on {page.url} (model {page.model}; split mode {split}{built})", flush=True)

    await serve_with_web(registry, options, web, ready, failed, web_ready)
