"""`maskformer serve` under load on loopback: throughput, latency percentiles, errors, server memory, the gain of
micro-batching, and the server's overhead over calling `Predictor` in a loop in one process.

The server runs as its own process (`python -m maskformer serve`, so its RSS is its own and the clients do not share
its GIL); clients are threads with one httpx connection each, sending the same 512x512 synthetic PNG (raw body,
format=segments) back to back for `--seconds` per level:
  1. clients 1, 4, 16 against --max-batch N: requests/s, p50/p95/p99 latency (ms), errors (non-200 answers);
  2. server RSS after warm-up, then after `--rss-requests` more requests (4 clients): growth in MiB;
  3. the same 16-client level against --max-batch 1: micro-batching's gain = throughput(N) / throughput(1);
  4. Predictor.predict_arrays in a loop on the decoded image (this process, server stopped): overhead at one client
     = server p50 / loop p50 - 1 (HTTP, PNG decoding, RLE encoding, JSON).

    .venv/bin/python benchmarks/bench_serve.py [--model maskformer_r18_synth] [--size 512] [--seconds 20]
    .venv/bin/python benchmarks/bench_serve.py --quick          # tiny settings: checks that it runs (no numbers)
Prints one JSON object and a Markdown table for benchmarks/RESULTS.md (measure on a quiet machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np


def png_image(size: int) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    from maskformer.data.synthetic import SynthConfig, render

    image, _, _ = render(SynthConfig(image_size=(size, size)), np.random.default_rng(0))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue(), image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m maskformer serve` on a free loopback port; rss() reads /proc (Linux)."""

    def __init__(self, args, max_batch: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "maskformer", "serve", "--model", args.model, "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-queue", str(args.max_queue), "--task", args.task,
               "--opts", f"inference.min_size_test={args.size}", f"inference.max_size_test={args.size}"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, body: bytes, clients: int, *, seconds: float | None = None, requests: int | None = None) -> dict:
    """`clients` threads posting `body` until `seconds` pass or `requests` are sent in all -> summary."""
    import httpx

    latencies, errors, lock, sent = [], [0], threading.Lock(), [0]
    stop_at = time.perf_counter() + (seconds or 1e9)

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop_at:
                with lock:
                    if requests is not None and sent[0] >= requests:
                        return
                    sent[0] += 1
                t0 = time.perf_counter()
                r = c.post("/predict", content=body, headers={"content-type": "image/png"})
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.__setitem__(0, errors[0] + 1))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(latencies, errors[0], time.perf_counter() - start, clients)


def summary(latencies: list[float], errors: int, elapsed: float, clients: int) -> dict:
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"clients": clients, "requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}  # fmt: skip


def predictor_loop(args, image: np.ndarray, seconds: float) -> dict:
    """Predictor.predict_arrays on the decoded image, back to back, in this process."""
    from maskformer.predict import Predictor
    from maskformer.serve.service import load_reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a preset name: random weights
        overrides = [f"inference.min_size_test={args.size}", f"inference.max_size_test={args.size}"]
        model, cfg, meta = load_reference(args.model, "cpu", overrides)
    predictor = Predictor(model, task=args.task, config=cfg, meta=meta)
    predictor.predict_arrays([image])  # warm-up
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        predictor.predict_arrays([image])
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, 0, time.perf_counter() - start, 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="maskformer_r18_synth", help="any --model reference (preset: random weights)")
    p.add_argument("--task", default="semantic", choices=["semantic", "panoptic", "instance"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=64, help="above 16 clients: every level stays below the bound")
    p.add_argument("--rss-requests", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.clients, args.rss_requests = 96, 1.0, "1,4", 20
    levels = [int(c) for c in args.clients.split(",")]
    body, image = png_image(args.size)
    result = {"model": args.model, "task": args.task, "size": args.size, "max_batch": args.max_batch,
              "cpu_threads": os.cpu_count()}  # fmt: skip

    server = ServerProcess(args, args.max_batch)
    try:
        load(server.url, body, 1, requests=5)  # warm-up
        result["levels"] = [load(server.url, body, n, seconds=args.seconds) for n in levels]
        rss_before, steps = server.rss_mib(), []
        for _ in range(4):  # RSS after each quarter: a leak keeps growing, allocator warm-up levels off
            load(server.url, body, 4, requests=max(1, args.rss_requests // 4))
            steps.append(round(server.rss_mib(), 1))
        result["rss_mib"] = {"before": rss_before, "after": steps[-1], "requests": args.rss_requests, "steps": steps}
    finally:
        server.stop()

    single = ServerProcess(args, 1)
    try:
        load(single.url, body, 1, requests=5)
        batch1 = load(single.url, body, levels[-1], seconds=args.seconds)
    finally:
        single.stop()
    batched = result["levels"][-1]
    result["micro_batching"] = {"clients": levels[-1], "rps_batch_1": batch1["rps"], "rps_batched": batched["rps"],
                                "gain": batched["rps"] / max(batch1["rps"], 1e-9)}  # fmt: skip
    loop = predictor_loop(args, image, args.seconds)
    one = result["levels"][0]
    result["predictor_loop"] = loop
    result["overhead_at_1_client"] = one["p50_ms"] / loop["p50_ms"] - 1
    print(json.dumps(result, indent=1, default=float))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    rows = ["| clients | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    rows += [f"| {x['clients']} | {x['rps']:.2f} | {x['p50_ms']:.1f} | {x['p95_ms']:.1f} | {x['p99_ms']:.1f} | "
             f"{x['errors']} |" for x in r["levels"]]  # fmt: skip
    m, rss = r["micro_batching"], r["rss_mib"]
    rows.append(f"\nmicro-batching (max-batch {r['max_batch']} vs 1, {m['clients']} clients): {m['gain']:.2f}x; "
                f"server RSS {rss['before']:.0f} -> {rss['after']:.0f} MiB over {rss['requests']} requests "
                f"(after each quarter: {', '.join(f'{v:.0f}' for v in rss['steps'])}); "
                f"overhead over Predictor in a loop at 1 client: {100 * r['overhead_at_1_client']:+.1f}% "
                f"(p50 {r['levels'][0]['p50_ms']:.1f} vs {r['predictor_loop']['p50_ms']:.1f} ms)")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
