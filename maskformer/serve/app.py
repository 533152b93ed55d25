"""The Starlette application: routes, request limits, error answers, the static web page.

    GET  /            the web page (maskformer/serve/static/)        GET /model    label space, tasks, input size
    POST /predict     image (multipart or raw body) -> JSON or PNG   GET /health   200 while the worker runs
    GET  /examples    built-in example images (synthetic, drawn)     GET /metrics  Prometheus text

Every refusal is a JSON body {"error": message} with a 4xx status (413 body or pixel limit, 422 parameters, 400 bad
image, 503 + Retry-After when the queue is full); an error inside the model is a 500 and the server carries on.
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from maskformer.io import image_bytes
from maskformer.serve.encode import encode
from maskformer.serve.metrics import CONTENT_TYPE
from maskformer.serve.service import BadInput, ModelService, QueueFull, decode_image

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_BODY = 20 * 1024 * 1024
NUM_EXAMPLES = 3
ROUTES = ("/", "/predict", "/model", "/health", "/metrics", "/examples")


def create_app(service: ModelService, *, max_body_bytes: int = DEFAULT_MAX_BODY, close_service: bool = True):
    """The ASGI app serving `service`; close_service: stop its batcher when the server shuts down."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        if close_service:
            service.close()

    async def predict(request: Request) -> Response:
        try:
            data, fields = await _read_upload(request, max_body_bytes)
            params = service.parse_params({**request.query_params, **fields})
            image = await run_in_threadpool(decode_image, data, max_pixels=service.max_pixels)
            future = service.submit(image, params)
        except BadInput as e:
            return _error(str(e), e.status)
        except QueueFull as e:
            return _error(f"server busy: {e}; retry shortly", 503, {"Retry-After": "1"})
        try:
            pred = await asyncio.wrap_future(future)
        except Exception as e:  # a failure inside the model: this request only
            return _error(f"prediction failed: {type(e).__name__}: {e}", 500)
        encoder = functools.partial(encode, pred, task=params.task, fmt=params.format, meta=service.meta,
                                    threshold=params.threshold, masks=params.masks)  # fmt: skip
        body, media_type, headers = await run_in_threadpool(encoder)
        return Response(body, media_type=media_type, headers=headers)

    async def model_info(request: Request) -> Response:
        return JSONResponse(service.info())

    async def health(request: Request) -> Response:
        alive = service.batcher.alive
        body = {"status": "ok" if alive else "worker stopped", "queue_length": len(service.batcher),
                "busy": service.batcher.busy, "batches": service.batcher.batches}  # fmt: skip
        return JSONResponse(body, status_code=200 if alive else 503)

    async def metrics(request: Request) -> Response:
        text = service.metrics.render(len(service.batcher), service.batcher.max_queue)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def examples(request: Request) -> Response:
        return JSONResponse([{"name": f"synthetic {i + 1}", "url": f"/examples/{i}.png"} for i in range(NUM_EXAMPLES)])

    async def example(request: Request) -> Response:
        i = request.path_params["index"]
        if not 0 <= i < NUM_EXAMPLES:
            return _error(f"no example {i}; there are {NUM_EXAMPLES}", 404)
        return Response(await run_in_threadpool(example_png, i), media_type="image/png")

    routes = [
        Route("/", index),
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model_info),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/examples", examples),
        Route("/examples/{index:int}.png", example),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {HTTPException: _http_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return MetricsMiddleware(app, service)


class MetricsMiddleware:
    """Counts every HTTP response by route and status and times it (pure ASGI: works for streamed bodies too)."""

    def __init__(self, app, service: ModelService):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            path = path if path in ROUTES else "/examples" if path.startswith("/examples/") else "other"
            self.service.metrics.observe_request(path, status[0], time.perf_counter() - start)


async def _read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """(image bytes, form fields) from a multipart upload (the first file part) or the raw body; 413 past `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadInput(f"request body of {declared} bytes is over this server's limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(f"request body is over this server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, {}

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=32, max_part_size=limit)
    except (HTTPException, MultiPartException, ValueError) as e:
        raise BadInput(f"malformed multipart body: {getattr(e, 'detail', e)}") from None
    try:
        files = [v for v in form.values() if not isinstance(v, str)]
        if not files:
            raise BadInput("multipart body has no file part; send the image as a file field (-F image=@photo.jpg)")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return await files[0].read(), fields
    finally:
        await form.close()


def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(str(exc.detail), exc.status_code, getattr(exc, "headers", None))


@functools.lru_cache(maxsize=NUM_EXAMPLES)
def example_png(i: int) -> bytes:
    """A built-in example: synthetic image i (maskformer.data.synthetic; drawn, not shipped), 320 x 240 PNG."""
    from maskformer.data.synthetic import SynthConfig, render

    cfg = SynthConfig(image_size=(240, 320), min_instances=2, max_instances=5)
    image, _, _ = render(cfg, np.random.default_rng(1000 + i))
    return image_bytes(image)
