"""`maskformer predict --model DIR_OR_PRESET INPUTS... --task semantic|panoptic|instance --out DIR`.

INPUTS are image files, folders (their images, sorted) or glob patterns. Writes into --out:
  semantic/<name>.png   label maps (contiguous ids, or the dataset's ids with --dataset-ids)
  panoptic/<name>.png + panoptic.json   COCO panoptic format (dataset category ids)
  instances.json        COCO instance results with RLE masks
  overlay/<name>.png    colour overlays with outlines and a legend (unless --no-overlay)
  inputs.json           which input file each <name> came from, and its files (stems that repeat: photo, photo_1)
  .parts/<name>.json    the image's JSON entries, written last: present == the image complete (--skip-existing
                        resumes; `torchrun --nproc_per_node N -m maskformer predict` shards the inputs)
A missing or unreadable image is reported by name and skipped (exit status 1); an empty folder is an error (2).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from tqdm import tqdm

from maskformer import io as fmt
from maskformer import visualize as vis
from maskformer.backends import BACKENDS
from maskformer.commands.options import check_args, cpu_threads, loud_warnings
from maskformer.io import IMAGE_EXTS, FormatError, list_files, save_json, write_image
from maskformer.precision import PRECISIONS
from maskformer.predict import ImageError, Prediction, Predictor, load_image
from maskformer.sharding import finish, merged_parts, part_path, plan, process_group, write_part
from maskformer.structures import TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("--model", required=True, help="a model directory (save_pretrained) or a preset name")
    p.add_argument("--task", choices=TASKS, default=None, help="default: the model config's inference.task")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores minus the load)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--min-size", type=int, default=None, help="test-time short side (default: the config's)")
    p.add_argument("--max-size", type=int, default=None, help="test-time long-side cap (default: the config's)")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip averaging (semantic)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="auto: bf16 where the hardware has it")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="onnxruntime: the exported graph (CPU)")
    p.add_argument("--calibration", metavar="DIR", help="int8 on onnxruntime: images to calibrate on")
    p.add_argument("--threshold", type=float, default=0.5, help="instances: minimum score drawn in overlays")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    p.add_argument("--dataset-ids", action="store_true", help="semantic PNGs hold dataset ids, not contiguous ids")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--skip-existing", action="store_true", help="resume: skip images whose outputs are complete")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (after the inputs)")


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders and globs -> image paths in order (missing ones kept, so they are reported by name)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_files(path, IMAGE_EXTS, recursive=recursive)
            if not found:
                raise FormatError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif not path.exists() and any(ch in item for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            files.extend(matched or [path])
        else:
            files.append(path)
    return files


class Writer:
    """Writes each prediction's files as it comes, and the JSON files at the end."""

    def __init__(self, out: Path, predictor: Predictor, args: argparse.Namespace):
        self.out, self.task, self.meta, self.names = out, predictor.task, predictor.meta, set()
        self.overlay, self.dataset_ids, self.threshold = not args.no_overlay, args.dataset_ids, args.threshold

    def name_for(self, path: Path) -> str:
        """A unique output stem (photo, photo_1, ... when stems repeat)."""
        stem, k = path.stem, 1
        while stem in self.names:
            stem, k = f"{path.stem}_{k}", k + 1
        self.names.add(stem)
        return stem

    def add(self, pred: Prediction, image, stem: str, source: Path) -> None:
        """Write the image's files; its JSON entries name the input file they came from ("input_file")."""
        name = f"{stem}.png"
        entries = []
        if self.task == "semantic":
            fmt.write_semantic(self.out / "semantic" / name, pred.semantic, self.meta, dataset_ids=self.dataset_ids)
        elif self.task == "panoptic":
            fmt.write_panoptic(self.out / "panoptic" / name, pred.panoptic)
            entries = [fmt.panoptic_annotation(pred.panoptic, pred.segments, image_id=stem, file_name=name)]
        else:
            entries = fmt.instance_results(pred.instances, image_id=stem, meta=self.meta)
        if self.overlay:
            overlay = vis.prediction_overlay(image, pred, self.meta, threshold=self.threshold)
            write_image(self.out / "overlay" / name, overlay)
        entries = [{**e, "input_file": str(source)} for e in entries]
        write_part(self.out, stem, entries)  # last: the image's outputs are complete (maskformer.sharding)

    def finish(self, jobs: list[tuple[Path, str]]) -> None:
        """The JSON files from the complete images' parts, in input order, and inputs.json: for each complete
        image, the input file, its output name (image_id) and its files."""
        stems = [stem for _, stem in jobs]
        done = [(path, stem) for path, stem in jobs if part_path(self.out, stem).is_file()]
        folders = ([self.task] if self.task != "instance" else []) + (["overlay"] if self.overlay else [])
        images = [{"input_file": str(p), "image_id": s, "files": [f"{f}/{s}.png" for f in folders]} for p, s in done]
        save_json(self.out / "inputs.json", {"images": images}, indent=1)
        if self.task == "panoptic":
            fmt.write_panoptic_json(self.out / "panoptic.json", merged_parts(self.out, stems), self.meta)
        elif self.task == "instance":
            save_json(self.out / "instances.json", merged_parts(self.out, stems))


def run(args: argparse.Namespace) -> int:
    check_args(args, out_folder=args.out)  # bad values, unwritable --out: one line before any work
    with cpu_threads(args.threads), process_group(args.device), loud_warnings():  # torchrun: a block of the inputs
        try:
            files = expand_inputs(args.inputs, args.recursive)
            predictor = Predictor(
                args.model, task=args.task, device=args.device, min_size_test=args.min_size,
                max_size_test=args.max_size, batch_size=args.batch_size, tta=args.tta, overrides=args.opts,
                precision=args.precision, backend=args.backend, calibration=args.calibration,
            )  # fmt: skip
        except (ValueError, KeyError, OSError) as e:  # no images, unknown model, bad override, unreadable weights
            print(f"error: {e}", file=sys.stderr)
            return 2
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        writer = Writer(out, predictor, args)
        jobs = [(path, writer.name_for(path)) for path in files]  # (input, output stem): alike in every process
        mine, note = plan(jobs, out, skip_existing=args.skip_existing)  # this process's block, less complete images
        failed = _predict_all(mine, predictor, writer)
        finish(lambda: writer.finish(jobs))
        done = len(mine) - len(failed)
        print(f"{done} of {len(mine)} images{note} -> {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


def _predict_all(jobs: list[tuple[Path, str]], predictor: Predictor, writer: Writer) -> list[str]:
    """(input, output stem) pairs predictor.batch_size at a time with a progress bar; unreadable files are reported
    and skipped. Returns their names."""
    failed: list[str] = []
    with tqdm(total=len(jobs), unit="img", desc="predict") as bar:
        for b0 in range(0, len(jobs), predictor.batch_size):
            images, done = [], []
            for path, stem in jobs[b0 : b0 + predictor.batch_size]:
                try:
                    images.append(load_image(path))
                    done.append((path, stem))
                except ImageError as e:
                    tqdm.write(f"skipped: {e}", file=sys.stderr)
                    failed.append(str(path))
            if images:
                preds = predictor.predict_arrays(images, [str(p) for p, _ in done])
                for pred, image, (path, stem) in zip(preds, images, done):
                    writer.add(pred, image, stem, path)
            bar.update(len(jobs[b0 : b0 + predictor.batch_size]))
    return failed
