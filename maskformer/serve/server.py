"""Running the app on uvicorn: in the foreground (`maskformer serve`), in a background thread (tests, benchmarks,
notebooks), or as several worker processes (each loads the model and has its own queue and metrics).

    with BackgroundServer(ModelService.load("runs/synth/model")) as server:   # 127.0.0.1, a free port
        httpx.post(f"{server.url}/predict", content=open("photo.jpg", "rb").read())
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from maskformer.serve.service import ModelService

WORKER_SETTINGS_ENV = "MASKFORMER_SERVE_SETTINGS"  # JSON handed from `maskformer serve --workers N` to its workers


class BackgroundServer:
    """uvicorn serving `service` on a daemon thread, bound before start (port 0: a free one); stop() or `with`."""

    def __init__(self, service: ModelService, *, host: str = "127.0.0.1", port: int = 0, **app_kwargs):
        import uvicorn

        from maskformer.serve.app import create_app

        self.service = service
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(service, **app_kwargs), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(service: ModelService, *, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int | None = None) -> None:
    """Serve in the foreground until Ctrl-C (one process)."""
    import uvicorn

    from maskformer.serve.app import DEFAULT_MAX_BODY, create_app

    app = create_app(service, max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY)
    uvicorn.run(app, host=host, port=port, log_level="info")


def run_workers(settings: dict, *, host: str, port: int, workers: int) -> None:
    """Serve with `workers` processes; each builds its app with `app_from_settings` from `settings` (JSON-able:
    reference, max_body_bytes and ModelService.load's keywords: device, overrides, task, max_batch, ...)."""
    import uvicorn

    os.environ[WORKER_SETTINGS_ENV] = json.dumps({**settings, "workers": workers})  # read by the spawned workers
    uvicorn.run("maskformer.serve.server:app_from_settings", factory=True, host=host, port=port, workers=workers)


def app_from_settings():
    """uvicorn factory for worker processes: the model and app from WORKER_SETTINGS_ENV. Each worker runs torch
    on its share of the cores (this process is the server and nothing else)."""
    import torch

    from maskformer.serve.app import create_app

    s = json.loads(os.environ[WORKER_SETTINGS_ENV])
    torch.set_num_threads(max(1, torch.get_num_threads() // s.pop("workers")))
    max_body = s.pop("max_body_bytes")
    return create_app(ModelService.load(s.pop("reference"), **s), max_body_bytes=max_body)
