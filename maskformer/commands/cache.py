"""`maskformer cache ls|rm`: the downloaded and converted models under MASKFORMER_HOME (default ~/.cache/maskformer).

Examples:
  maskformer cache ls
  maskformer cache rm maskformer_swin_t_ade20k        # its converted model and its download
  maskformer cache rm 'hub--facebook--*'             # fnmatch patterns over keys, zoo names, references, URLs
  maskformer cache rm --all
Raw files of hub ids stay in the Hugging Face cache (`hf cache ls` / `hf cache rm`).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="list cached models and downloads")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    rm = sub.add_parser("rm", help="remove cached models / downloads by name, key, reference or URL")
    rm.add_argument("names", nargs="*", help="zoo names, cache keys, references or URLs (fnmatch patterns)")
    rm.add_argument("--all", action="store_true", help="remove everything in the cache")


def run(args: argparse.Namespace) -> int:
    from maskformer.hub import cache

    if args.action == "ls":
        entries = cache.list_entries()
        if args.json:
            rows = [dict(kind=e.kind, key=e.key, path=str(e.path), size=e.size, state=e.state, source=e.source)
                    for e in entries]  # fmt: skip
            print(json.dumps(rows, indent=1))
            return 0
        print(f"cache: {cache.home()}" + ("" if entries else " (empty)"))
        for e in entries:
            origin = e.source.get("zoo") or e.source.get("ref") or e.source.get("url") or ""
            state = "" if e.state == "ready" else f" [{e.state}]"
            print(f"{e.kind:<8}  {cache.human_size(e.size):>9}  {e.key}{state}  {origin}")
        return 0
    if not args.names and not args.all:
        print("error: name what to remove (see `maskformer cache ls`), or pass --all", file=sys.stderr)
        return 2
    entries = cache.list_entries() if args.all else cache.find_entries(args.names)
    if not entries:
        print(f"nothing in {cache.home()} matches {' '.join(args.names)} (see `maskformer cache ls`)", file=sys.stderr)
        return 1
    for e in entries:
        cache.remove(e)
        print(f"removed {e.path} ({cache.human_size(e.size)})")
    return 0
