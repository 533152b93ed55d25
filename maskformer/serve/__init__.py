"""`maskformer serve`: an HTTP API (Starlette on uvicorn) and a web page for looking at segmentations.

    batcher.py   bounded queue + one worker thread running micro-batches (no HTTP, no model)
    service.py   request parameters, image decoding with limits, the model behind the batcher (`ModelService`)
    encode.py    Prediction -> response bodies: segments with COCO RLE, transformers-pipeline JSON, label/panoptic PNG
    metrics.py   Prometheus text for /metrics
    app.py       the Starlette routes; static/ holds the web page (plain HTML/CSS/JS, nothing from other hosts)
    server.py    uvicorn in the foreground, in a background thread (`BackgroundServer`), or as worker processes

Needs the optional extra: `pip install 'maskformer[serve]'` (starlette, uvicorn, python-multipart); `require_extra()`
says so in one line. The submodules that import starlette or uvicorn are imported only when used.
"""

from __future__ import annotations

import importlib.util

EXTRA_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_extra() -> None:
    """ImportError naming what is missing and how to install it, when the serve extra is not installed."""
    missing = [pip for mod, pip in EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(
            f"maskformer serve needs {', '.join(missing)}: pip install 'maskformer[serve]' (or pip install "
            f"{' '.join(missing)})"
        )
