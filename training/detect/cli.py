"""``dir-models``: install and inspect model_store entries (detectors), run and evaluate a detector.

dir-models add-detector yolo-fastestv2 WEIGHTS.pth [--store model_store] [--name yolo-fastestv2]
dir-models add-detector onnx MODEL.onnx --layout yolov5|yolov8 --names coco.names --input-size 640
dir-models list [--store model_store]
dir-models detect IMAGE [--name N] [--conf 0.3] [--iou 0.4] [--out annotated.png]
dir-models evaluate-detector [--name N] [--images DIR --labels DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from modelstore.detector import Detector, draw_detections, find_detector, load_detector
from modelstore.errors import ModelStoreError
from modelstore.manifest import read_manifest
from training.detect.coco_map import coco128_dirs, evaluate_detector
from training.detect.entries import install_onnx, read_names
from training.detect.install import install_yolo_fastestv2
from training.paths import REPO_ROOT

DEFAULT_STORE = REPO_ROOT / "model_store"


def _entry_name(text: str) -> str:
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    if not cleaned:
        raise argparse.ArgumentTypeError(f"cannot make a model_store name from {text!r}")
    return cleaned


def _add_yolo_fastestv2(args: argparse.Namespace) -> int:
    names = read_names(args.names) if args.names else None
    entry = install_yolo_fastestv2(args.path, args.store, args.name, args.version, names, args.force)
    parity = read_manifest(entry).metrics["onnx_parity"]
    print(f"installed {entry} (ONNX vs torch: {parity})")
    return 0


def _add_onnx(args: argparse.Namespace) -> int:
    entry = install_onnx(
        args.path,
        args.store,
        args.layout,
        read_names(args.names),
        args.input_size,
        args.name or _entry_name(args.path.stem),
        version=args.version,
        channel_order=args.channel_order,
        resize=args.resize,
        conf=args.conf,
        iou=args.iou,
        force=args.force,
    )
    print(f"installed {entry}")
    return 0


def _list(args: argparse.Namespace) -> int:
    manifests = sorted(Path(args.store).glob("*/*/manifest.json"))
    if not manifests:
        print(f"no entries under {args.store}")
    for path in manifests:
        try:
            m = read_manifest(path.parent)
        except (OSError, ValueError) as exc:
            print(f"{path.parent}: unreadable manifest ({exc})")
            continue
        layout = m.extra.get("output_layout", "")
        print(f"{m.name}/{m.version}\t{m.task}\t{layout}\t{m.description}")
    return 0


def _load(args: argparse.Namespace) -> Detector:
    entry = find_detector(args.store, args.name)
    if entry is None:
        which = f"named {args.name!r} " if args.name else ""
        raise SystemExit(
            f"no detector {which}under {args.store}; install one with "
            "`dir-models add-detector yolo-fastestv2 PATH`"
        )
    return load_detector(entry)


def _detect(args: argparse.Namespace) -> int:
    detector = _load(args)
    with Image.open(args.image) as im:
        image = np.asarray(im.convert("RGB"))
    detections = detector.detect(image, args.conf, args.iou)
    print(json.dumps([d.to_dict() for d in detections], indent=2))
    if args.out:
        Image.fromarray(draw_detections(image, detections)).save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    detector = _load(args)
    images, labels = coco128_dirs()
    result = evaluate_detector(
        detector, args.images or images, args.labels or labels, conf=args.conf, iou=args.iou
    )
    result["detector"] = f"{detector.name}/{detector.version}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['detector']} on {result['n_images']} images / {result['n_boxes']} boxes "
            f"(conf {result['conf']}, NMS IoU {result['nms_iou']}): mAP@0.5 {result['map50']:.4f}, "
            f"mAP@0.5:0.95 {result['map50_95']:.4f} (COCO 101-point); "
            f"VOC all-point mAP@0.5 {result['map50_voc_all_point']:.4f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dir-models`` argument parser."""
    parser = argparse.ArgumentParser(prog="dir-models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def store_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store", type=Path, default=DEFAULT_STORE, help="model_store root (default: %(default)s)"
        )

    add = sub.add_parser("add-detector", help="install a detector entry into model_store")
    kinds = add.add_subparsers(dest="kind", required=True)

    yf = kinds.add_parser("yolo-fastestv2", help="Yolo-FastestV2 PyTorch state_dict -> ONNX entry")
    yf.add_argument("path", type=Path, help="the .pth state_dict (e.g. coco2017-0.241078ap-model.pth)")
    yf.add_argument("--name", type=_entry_name, default="yolo-fastestv2")
    yf.add_argument("--version", default="1")
    yf.add_argument("--names", type=Path, help="class names, one a line (default: the 80 COCO names)")
    yf.add_argument("--force", action="store_true", help="replace an existing entry of that name/version")
    store_opt(yf)
    yf.set_defaults(func=_add_yolo_fastestv2)

    ox = kinds.add_parser("onnx", help="a YOLOv5 (N,B,5+C) or YOLOv8 (N,4+C,B) ONNX export")
    ox.add_argument("path", type=Path)
    ox.add_argument("--layout", choices=["yolov5", "yolov8"], required=True)
    ox.add_argument("--names", type=Path, required=True, help="class names, one a line (index = class id)")
    ox.add_argument("--input-size", type=int, default=640, help="square input side (default: %(default)s)")
    ox.add_argument("--name", type=_entry_name, help="entry name (default: the file's stem)")
    ox.add_argument("--version", default="1")
    ox.add_argument("--channel-order", choices=["RGB", "BGR"], default="RGB")
    ox.add_argument("--resize", choices=["letterbox", "stretch"], default="letterbox")
    ox.add_argument("--conf", type=float, default=0.25, help="default score threshold")
    ox.add_argument("--iou", type=float, default=0.45, help="default NMS IoU threshold")
    ox.add_argument("--force", action="store_true")
    store_opt(ox)
    ox.set_defaults(func=_add_onnx)

    ls = sub.add_parser("list", help="list model_store entries")
    store_opt(ls)
    ls.set_defaults(func=_list)

    for cmd, func, helptext in (
        ("detect", _detect, "detect objects in one image (JSON to stdout)"),
        ("evaluate-detector", _evaluate, "mAP on a YOLO-format dataset (default coco128_val)"),
    ):
        p = sub.add_parser(cmd, help=helptext)
        if cmd == "detect":
            p.add_argument("image", type=Path)
            p.add_argument("--out", type=Path, help="also write the annotated image here")
        else:
            p.add_argument("--images", type=Path, help="images folder (default: coco128_val)")
            p.add_argument("--labels", type=Path, help="YOLO labels folder (default: coco128_val)")
            p.add_argument("--json", action="store_true")
        p.add_argument("--name", help="detector entry name (default: yolo-fastestv2 where installed)")
        p.add_argument("--conf", type=float, help="score threshold (default: the entry's)")
        p.add_argument("--iou", type=float, help="NMS IoU threshold (default: the entry's)")
        store_opt(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dir-models``; errors of the model store print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ModelStoreError, FileNotFoundError, ValueError) as exc:
        print(f"dir-models: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
