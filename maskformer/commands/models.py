"""`maskformer models`: the model presets, with the paper's parameter and GFLOP numbers where the paper gives them;
`--zoo`: the pretrained models (model zoo) with the paper's metric and whether each is already cached.
"""

from __future__ import annotations

import argparse
import json

from maskformer.config import PAPER_NUMBERS, PRESETS, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", default="", help="only presets whose name contains this text")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--zoo", action="store_true", help="list the pretrained models (usable as --model NAME)")


def preset_rows(name_filter: str = "") -> list[dict]:
    """One dict per preset: name, arch, backbone, pixel decoder, dataset, classes, queries, crop, paper numbers."""
    rows = []
    for name in sorted(n for n in PRESETS if name_filter in n):
        cfg = get_preset(name)
        m = cfg.model
        params, gflops = PAPER_NUMBERS.get(name, (None, None))
        queries = m.num_queries if m.arch != "per_pixel_baseline" else None
        row = dict(name=name, arch=m.arch, backbone=m.backbone, pixel_decoder=m.pixel_decoder, dataset=cfg.data.format)
        row.update(classes=m.num_classes, queries=queries, crop=list(cfg.data.crop_size))
        rows.append(row | dict(paper_params_m=params, paper_gflops=gflops))
    return rows


def zoo_rows(name_filter: str = "") -> list[dict]:
    """One dict per zoo entry: name, preset, dataset, task, metric, source, cached (a converted copy exists)."""
    from maskformer.hub import ZOO
    from maskformer.hub.cache import models_dir, safe_key

    keys = ("name", "preset", "dataset", "task", "metric", "source")
    rows = [{k: getattr(e, k) for k in keys} for e in ZOO.values() if name_filter in e.name]
    for row in rows:
        row["cached"] = (models_dir() / safe_key("zoo", row["name"]) / "config.json").is_file()
    return rows


def _aligned(cells: list[tuple[str, ...]]) -> str:
    """Rows of cells as text columns padded to the widest cell."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))).rstrip() for c in cells)


def _zoo_table(rows: list[dict]) -> str:
    cells = [(r["name"], r["dataset"], r["task"], r["metric"], "yes" if r["cached"] else "") for r in rows]
    return _aligned([("name", "dataset", "task", "metric (paper)", "cached")] + cells)


def _table(rows: list[dict]) -> str:
    def paper(v, unit: str = "") -> str:
        return "" if v is None else f"{v}{unit}"

    heads = ("preset", "backbone", "dataset", "K", "crop", "params (paper)", "GFLOPs (paper)")
    cells = [
        (r["name"], r["backbone"], r["dataset"], str(r["classes"]), "x".join(map(str, r["crop"])))
        + (paper(r["paper_params_m"], "M"), paper(r["paper_gflops"]))
        for r in rows
    ]
    return _aligned([heads] + cells)


def run(args: argparse.Namespace) -> int:
    rows = zoo_rows(args.filter) if args.zoo else preset_rows(args.filter)
    if not rows:
        print(f"no {'zoo' if args.zoo else 'preset'} name contains {args.filter!r}")
        return 1
    print(json.dumps(rows, indent=1) if args.json else (_zoo_table if args.zoo else _table)(rows))
    return 0
