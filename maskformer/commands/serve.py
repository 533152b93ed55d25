"""`maskformer serve --model REF [--host 127.0.0.1] [--port 8000] [--task ...] [--max-batch N] [--workers N]
[--precision auto|fp32|bf16|fp16|int8] [--backend torch|onnxruntime]` (what runs is reported by GET /model).

Serves POST /predict, GET /model, /health, /metrics and a web page at / (see maskformer/serve and the README).
Binds to 127.0.0.1 unless --host says otherwise: there is no authentication, so expose it with care.
"""

from __future__ import annotations

import argparse
import sys

from maskformer.backends import BACKENDS
from maskformer.precision import PRECISIONS
from maskformer.structures import TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model directory, checkpoint, preset, zoo name or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; no auth!)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--task", choices=TASKS, default=None, help="default task (default: the model config's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="auto: bf16 where the hardware has it")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="onnxruntime: the exported graph (CPU)")
    p.add_argument("--calibration", metavar="DIR", help="int8 on onnxruntime: images to calibrate on")
    p.add_argument("--max-batch", type=int, default=8, help="images per model call (micro-batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill up")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which the server answers 503")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted (width x height)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body accepted (413 beyond)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model and queue")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from maskformer.serve import require_extra

    for name in ("port", "max_batch", "max_queue", "max_pixels", "workers"):
        if getattr(args, name) < (0 if name == "port" else 1):
            print(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        require_extra()
        from maskformer.serve.server import run as serve_forever
        from maskformer.serve.server import run_workers
        from maskformer.serve.service import ModelService

        limits = dict(task=args.task, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000,
                      max_queue=args.max_queue, max_pixels=args.max_pixels, precision=args.precision,
                      backend=args.backend, calibration=args.calibration)  # fmt: skip
        service = ModelService.load(args.model, device=args.device, overrides=args.opts, **limits)
    except (ImportError, ValueError, KeyError, OSError) as e:  # missing extra, unknown model, bad override, task, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    max_body = int(args.max_body_mb * 1024 * 1024)
    runs = f"task {service.task}, {service.predictor.precision} on {args.backend}"
    print(f"maskformer serve: {args.model} on http://{args.host}:{args.port}/ ({runs}; Ctrl-C stops)")
    if args.workers == 1:
        serve_forever(service, host=args.host, port=args.port, max_body_bytes=max_body)
        return 0
    service.close()  # it loaded to check the reference; each worker process loads its own
    settings = dict(reference=args.model, device=args.device, overrides=args.opts, max_body_bytes=max_body, **limits)
    run_workers(settings, host=args.host, port=args.port, workers=args.workers)
    return 0
