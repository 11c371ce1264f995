"""Console scripts: ``dir-serve`` (the API) and ``dir-worker`` (a Redis Streams worker)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

import redis
import uvicorn
from prometheus_client import start_http_server
from prometheus_client.multiprocess import mark_process_dead

from modelstore.store import resolve_entry
from service.api.app import create_app
from service.errors import InferenceError
from service.metrics import Metrics, multiprocess_dir
from service.redact import Redactor, install_log_redaction
from service.server import uvicorn_config
from service.settings import Settings
from service.store import RestoreModel, tile_geometry
from service.worker import Worker


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def serve(argv: list[str] | None = None) -> None:
    """``dir-serve [--host H] [--port P] [--queue embedded|redis://...] [--model-store DIR]``."""
    parser = argparse.ArgumentParser(
        prog="dir-serve", description="DiR-ISP inference API (settings: DIR_* env)"
    )
    parser.add_argument("--host", help="bind address (DIR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (DIR_PORT, default 8000)")
    parser.add_argument("--queue", help="'embedded' (default) or redis://host:6379/0 (DIR_QUEUE)")
    parser.add_argument("--model-store", dest="model_store", help="model store root (DIR_MODEL_STORE)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = Settings(**_overrides(args, ("host", "port", "queue", "model_store")))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.Server(uvicorn_config(create_app(settings), settings, args.log_level)).run()


def worker(argv: list[str] | None = None) -> None:
    """``dir-worker --queue redis://... [--metrics-port P]``: serve the restoration model's job stream."""
    parser = argparse.ArgumentParser(prog="dir-worker", description="DiR-ISP Redis Streams worker")
    parser.add_argument("--queue", help="redis://host:6379/0 (DIR_QUEUE)")
    parser.add_argument("--model-store", dest="model_store", help="model store root (DIR_MODEL_STORE)")
    parser.add_argument("--name", help="consumer name (default host-pid)")
    parser.add_argument("--metrics-port", type=int, help="serve this worker's /metrics (single-process mode)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = Settings(**_overrides(args, ("queue", "model_store")))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_log_redaction(Redactor.for_urls(settings.queue))
    if not settings.uses_redis:
        parser.error("dir-worker needs a Redis queue: --queue redis://host:6379/0 or DIR_QUEUE")
    entry = resolve_entry(settings.model_store, settings.restore_model, "restore")
    model = RestoreModel.from_settings(entry, settings)
    if settings.warms_up(model.on_gpu):
        _, sides, _ = tile_geometry(entry, settings)
        try:
            seconds = model.warm_up(sides)
        except InferenceError as exc:
            parser.error(f"{model.ref} failed its start-up run with tiles of {sides} px: {exc.message}")
        logging.getLogger("dir.worker").info("warmed up %s in %.1f s", model.ref, seconds)
    metrics = Metrics()
    if args.metrics_port is not None and not multiprocess_dir():
        start_http_server(args.metrics_port, registry=metrics.registry)
    client = redis.Redis.from_url(settings.queue, socket_connect_timeout=2.0, socket_timeout=30.0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("dir.worker").info(
        "worker %s serving %s %s (%d parts per call x %d threads)",
        args.name or os.getpid(),
        model.ref,
        model.precision,
        model.parallel,
        settings.run_threads(model.parallel),
    )
    try:
        Worker(client, model, settings, metrics, consumer=args.name).run(stop)
    finally:
        if multiprocess_dir():
            mark_process_dead(os.getpid())
