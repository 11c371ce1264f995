"""Object detection on ONNX Runtime: load a ``task="detect"`` entry, pre-process, decode, NMS, draw.

Shared by the service (``POST /v1/detect``), ``dir-models`` and the ``detect`` evaluation protocol.
Runs on onnxruntime + numpy + pillow only (no torch, no service). One decoder serves every supported
entry because each entry states its graph's output layout in ``manifest.extra["output_layout"]``:

- ``"yolov5"``: ``(N, B, 5 + C)`` rows of cx, cy, w, h (pixels of the model input), objectness, C class
  probabilities; score = objectness x class probability, a box is kept when objectness > conf and
  score > conf. The installed Yolo-FastestV2 entry exports this layout (its decode is baked into the graph).
- ``"yolov8"``: ``(N, 4 + C, B)``: cx, cy, w, h then C class scores (no objectness); kept when score > conf.

Each box keeps its best class only; NMS is per class (boxes offset by class id), greedy, IoU > ``iou``
suppressed. Boxes come back in pixels of the caller's image, clipped to it.

Pre-processing follows ``manifest.extra``: ``channel_order`` ("BGR" for Yolo-FastestV2, whose reference
implementation feeds OpenCV's BGR array; "RGB" for Ultralytics exports), ``resize`` ("stretch": plain
bilinear resize to the square input as OpenCV's ``INTER_LINEAR`` does; "letterbox": aspect-preserving resize
centred on a ``pad_value`` canvas), values /255, no mean/std.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from pydantic import BaseModel

from modelstore.errors import ModelStoreError
from modelstore.manifest import Manifest, read_manifest
from modelstore.store import verify_files, version_key

Layout = Literal["yolov5", "yolov8"]
LAYOUTS: tuple[str, ...] = ("yolov5", "yolov8")
DEFAULT_DETECTOR_NAME = "yolo-fastestv2"
REQUIRED_EXTRA = ("class_names", "input_size", "channel_order", "resize", "output_layout")


class DetectorLayoutError(ModelStoreError):
    """A detector graph's output shape does not match the layout it was declared with."""


class DetectorInputError(ValueError):
    """A caller passed an image or a threshold the detector cannot use (not an entry problem)."""


class Detection(BaseModel):
    """One detected object. ``box`` is (x1, y1, x2, y2) in pixels of the image passed to ``detect``."""

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: class_id, class_name, score, box [x1, y1, x2, y2]."""
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "box": list(self.box),
        }


@dataclass(frozen=True)
class Letterbox:
    """Maps model-input pixels back to image pixels: ``x_img = (x_in - pad_x) / scale_x`` (same for y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int
    height: int


def check_image(image_rgb: np.ndarray) -> None:
    """Raise :class:`DetectorInputError` unless ``image_rgb`` is an (H, W, 3) uint8 array with H, W >= 1."""
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8:
        kind = getattr(image_rgb, "dtype", type(image_rgb).__name__)
        raise DetectorInputError(f"detector input must be a uint8 numpy array, got {kind}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or min(image_rgb.shape[:2]) < 1:
        raise DetectorInputError(f"detector input must have shape (H, W, 3), got {image_rgb.shape}")


RESIZE_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: interpolation weights in 1/2048 steps


def _linear_taps(n_out: int, n_in: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and fixed-point weights (w0, w1) summing to 2048 for each output pixel.

    Half-pixel centres computed in float32. ``clamp`` (OpenCV does it along x only) pins positions left of
    the first / right of the last source pixel to that pixel with weight 1; otherwise only the indices clip.
    """
    pos = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.intp)
    frac = (pos - i0).astype(np.float32)
    if clamp:
        outside = (i0 < 0) | (i0 >= n_in - 1)
        frac[outside] = 0.0
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    i0 = np.clip(i0, 0, n_in - 1)
    one = 1 << RESIZE_BITS
    w1 = np.rint(frac * one).astype(np.int32)
    w0 = np.rint((np.float32(1.0) - frac) * one).astype(np.int32)
    return i0, i1, w0, w1


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 array to (height, width, C) uint8, any channel order.

    Reproduces ``cv2.resize(image, (width, height))`` (INTER_LINEAR on uint8, the resize the Yolo-FastestV2
    reference uses) bit for bit, including its fixed-point arithmetic: horizontal pass with 11-bit weights,
    vertical pass as OpenCV's SIMD kernel computes it (rows >> 4, 16-bit high multiply, round by >> 2).
    """
    y0, y1, b0, b1 = _linear_taps(height, image.shape[0], clamp=False)
    x0, x1, a0, a1 = _linear_taps(width, image.shape[1], clamp=True)

    def horizontal(rows: np.ndarray) -> np.ndarray:  # only the source rows used: no full-size int copy
        return (
            rows[:, x0].astype(np.int32) * a0[None, :, None]
            + rows[:, x1].astype(np.int32) * a1[None, :, None]
        )

    top = ((horizontal(image[y0]) >> 4) * b0[:, None, None]) >> 16
    bottom = ((horizontal(image[y1]) >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) cx, cy, w, h -> (K, 4) x1, y1, x2, y2 (same units)."""
    half = boxes[:, 2:4] / 2.0
    return np.concatenate((boxes[:, :2] - half, boxes[:, :2] + half), 1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box against (K, 4) xyxy boxes -> (K,); zero-area unions give 0."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS. ``boxes`` (K, 4) xyxy, ``scores`` (K,); returns kept indices, highest score first.

    A box is suppressed when its IoU with a kept box is > ``iou``. With ``class_ids`` (K,) boxes of
    different classes never suppress each other (boxes shifted apart by class id).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    boxes = boxes.astype(np.float64)
    if class_ids is not None:
        span = float(np.abs(boxes).max()) * 2.0 + 1.0
        boxes = boxes + (class_ids.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.intp)


def decode(pred: np.ndarray, layout: str, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's raw output into (boxes (K, 4) xyxy in model-input pixels, scores (K,), class ids).

    ``pred`` is ``(B, 5 + C)`` for "yolov5" or ``(4 + C, B)`` for "yolov8" (see the module docstring).
    """
    if layout == "yolov5":
        obj = pred[:, 4]
        probs = pred[:, 5:] * obj[:, None]
        ids = probs.argmax(1)
        scores = probs[np.arange(len(pred)), ids]
        keep = (obj > conf) & (scores > conf)
    elif layout == "yolov8":
        pred = pred.T
        ids = pred[:, 4:].argmax(1)
        scores = pred[np.arange(len(pred)), 4 + ids]
        keep = scores > conf
    else:
        raise DetectorLayoutError(f"unknown output layout {layout!r}; supported: {', '.join(LAYOUTS)}")
    return xywh_to_xyxy(pred[keep, :4]), scores[keep], ids[keep]


def check_output_shape(shape: Sequence[int | str | None], layout: str, num_classes: int) -> None:
    """Raise :class:`DetectorLayoutError` unless an output shape fits ``layout`` with ``num_classes`` classes.

    "yolov5" wants (N, B, 5 + C), "yolov8" wants (N, 4 + C, B); symbolic dims (str/None) pass.
    """
    if layout not in LAYOUTS:
        raise DetectorLayoutError(f"unknown output layout {layout!r}; supported: {', '.join(LAYOUTS)}")
    shape = list(shape)
    axis, want = (2, 5 + num_classes) if layout == "yolov5" else (1, 4 + num_classes)
    expected = "(N, B, 5 + C)" if layout == "yolov5" else "(N, 4 + C, B)"
    if len(shape) != 3 or (isinstance(shape[axis], int) and shape[axis] != want):
        raise DetectorLayoutError(
            f"output shape {shape} does not match layout {layout!r}: expected {expected} with "
            f"C={num_classes} classes, i.e. dim {axis} = {want}"
        )


def input_dtype(onnx_type: str) -> type[np.floating[Any]]:
    """numpy dtype for an ONNX Runtime input type string: float16 for "tensor(float16)", else float32."""
    return np.float16 if onnx_type == "tensor(float16)" else np.float32


class Detector:
    """A loaded detector entry (see :func:`load_detector`). Thread-safe for concurrent ``detect`` calls."""

    def __init__(self, session: Any, manifest: Manifest, entry_dir: Path) -> None:
        extra = manifest.extra
        missing = [k for k in REQUIRED_EXTRA if k not in extra]
        if missing:
            raise ModelStoreError(f"detector entry {entry_dir} lacks manifest.extra keys {missing}")
        self.session = session
        self.manifest = manifest
        self.entry_dir = entry_dir
        self.name = manifest.name
        self.version = manifest.version
        try:
            self.class_names: list[str] = [str(n) for n in extra["class_names"]]
            self.input_size = int(extra["input_size"])
            self.channel_order = str(extra["channel_order"]).upper()
            self.resize_mode = str(extra["resize"])
            self.pad_value = int(extra.get("pad_value", 114))
            self.layout = str(extra["output_layout"])
            self.conf = float(extra.get("conf_threshold", 0.25))
            self.iou = float(extra.get("nms_iou", 0.45))
            self.max_det = int(extra.get("max_det", 300))
            self.eval_conf = float(extra.get("eval_conf_threshold", 0.001))
        except (TypeError, ValueError) as exc:
            raise ModelStoreError(f"detector entry {entry_dir}: malformed manifest.extra: {exc}") from exc
        if self.channel_order not in ("RGB", "BGR") or self.resize_mode not in ("stretch", "letterbox"):
            raise ModelStoreError(
                f"detector entry {entry_dir}: channel_order {self.channel_order!r} must be RGB or BGR and "
                f"resize {self.resize_mode!r} must be stretch or letterbox"
            )
        out = session.get_outputs()[0]
        check_output_shape(out.shape, self.layout, len(self.class_names))
        graph_input = session.get_inputs()[0]
        self.input_name: str = graph_input.name
        self.input_dtype = input_dtype(graph_input.type)
        self.dynamic_batch = not isinstance(graph_input.shape[0], int)

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> ((3, S, S) float32 in [0, 1] in the entry's channel order, mapping back)."""
        check_image(image_rgb)
        h, w = image_rgb.shape[:2]
        s = self.input_size
        if self.resize_mode == "stretch":
            canvas = resize_bilinear(image_rgb, s, s)
            box = Letterbox(s / w, s / h, 0.0, 0.0, w, h)
        else:
            r = min(s / h, s / w)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            px, py = (s - nw) // 2, (s - nh) // 2
            canvas = np.full((s, s, 3), self.pad_value, dtype=np.uint8)
            canvas[py : py + nh, px : px + nw] = resize_bilinear(image_rgb, nh, nw)
            box = Letterbox(nw / w, nh / h, float(px), float(py), w, h)
        if self.channel_order == "BGR":
            canvas = canvas[:, :, ::-1]
        return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / 255.0, box

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw graph call: (N, 3, S, S) float32 -> the layout's raw output (N, ...) as float32. Loops where
        the graph has a fixed batch of 1; casts to float16 for half-precision exports."""
        batch = batch.astype(self.input_dtype, copy=False)
        if self.dynamic_batch or len(batch) == 1:
            out = self.session.run(None, {self.input_name: batch})[0]
        else:
            out = np.concatenate([self.session.run(None, {self.input_name: b[None]})[0] for b in batch])
        return np.asarray(out, dtype=np.float32)

    def postprocess(
        self, pred: np.ndarray, box: Letterbox, conf: float | None = None, iou: float | None = None
    ) -> list[Detection]:
        """One image's raw output -> detections in image pixels, best score first (at most ``max_det``)."""
        conf = self.conf if conf is None else conf
        iou = self.iou if iou is None else iou
        if not (0.0 <= conf <= 1.0 and 0.0 <= iou <= 1.0):
            raise DetectorInputError(f"conf and iou must lie in [0, 1], got conf={conf} iou={iou}")
        boxes, scores, ids = decode(pred, self.layout, conf)
        keep = nms(boxes, scores, iou, ids)[: self.max_det]
        boxes = boxes[keep]
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - box.pad_x) / box.scale_x, 0, box.width)
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - box.pad_y) / box.scale_y, 0, box.height)
        return [
            Detection(
                class_id=int(c),
                class_name=self.class_names[int(c)],
                score=float(s),
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for b, s, c in zip(boxes, scores[keep], ids[keep], strict=True)
        ]

    def detect(
        self, image_rgb: np.ndarray, conf: float | None = None, iou: float | None = None
    ) -> list[Detection]:
        """Detect objects in one (H, W, 3) uint8 **RGB** image; thresholds default to the manifest's."""
        x, box = self.preprocess(image_rgb)
        return self.postprocess(self.run(x[None])[0], box, conf, iou)

    def detect_batch(
        self, images_rgb: Sequence[np.ndarray], conf: float | None = None, iou: float | None = None
    ) -> list[list[Detection]]:
        """Detect in several RGB uint8 images (any sizes) with one graph call where the batch is dynamic."""
        if not images_rgb:
            return []
        prepared = [self.preprocess(im) for im in images_rgb]
        preds = self.run(np.stack([x for x, _ in prepared]))
        return [self.postprocess(p, box, conf, iou) for p, (_, box) in zip(preds, prepared, strict=True)]


def default_providers() -> list[str]:
    """CUDA EP first where this onnxruntime build offers it, CPU EP always."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_detector(
    entry_dir: Path,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
    pins: Mapping[str, str] | None = None,
) -> Detector:
    """Load ``model_store/<name>/<version>/`` (task "detect") after checking its pin (``pins``, see
    :func:`modelstore.store.check_pin`) and every file's sha256."""
    entry_dir = Path(entry_dir)
    try:
        manifest = read_manifest(entry_dir)
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{entry_dir}: cannot read manifest.json: {exc}") from exc
    if manifest.task != "detect":
        raise ModelStoreError(f"{entry_dir}: manifest task is {manifest.task!r}, expected 'detect'")
    verify_files(entry_dir, manifest, pins)
    opts = ort.SessionOptions()
    if intra_op_threads is not None:
        opts.intra_op_num_threads = intra_op_threads
    try:
        session = ort.InferenceSession(
            str(entry_dir / manifest.onnx_file), opts, providers=providers or default_providers()
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise ModelStoreError(f"{entry_dir / manifest.onnx_file}: onnxruntime cannot load it: {exc}") from exc
    return Detector(session, manifest, entry_dir)


def find_detector(store: Path, name: str | None = None) -> Path | None:
    """The highest-version ``task="detect"`` entry under ``store`` (of ``name`` if given), else None.

    Without ``name``: "yolo-fastestv2" where installed, else the alphabetically first detector name.
    Versions compare by :func:`modelstore.store.version_key`.
    """
    store = Path(store)
    found: dict[str, list[tuple[tuple[tuple[int, int | str], ...], Path]]] = {}
    for manifest_path in sorted(store.glob("*/*/manifest.json")):
        entry = manifest_path.parent
        if name is not None and entry.parent.name != name:
            continue
        try:
            manifest = read_manifest(entry)
        except (OSError, ValueError):
            continue
        if manifest.task == "detect":
            found.setdefault(entry.parent.name, []).append((version_key(entry.name), entry))
    if not found:
        return None
    chosen = DEFAULT_DETECTOR_NAME if DEFAULT_DETECTOR_NAME in found else sorted(found)[0]
    return max(found[chosen], key=lambda t: t[0])[1]


def _colour(class_id: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.61803398875) % 1.0, 0.85, 0.95)
    return (int(255 * r), int(255 * g), int(255 * b))


def draw_detections(image_rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Copy of an (H, W, 3) uint8 RGB image with each detection's box and "name score" label drawn."""
    check_image(image_rgb)
    canvas = Image.fromarray(image_rgb)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(image_rgb.shape[:2]) / 320))
    for det in detections:
        colour = _colour(det.class_id)
        x1, y1, x2, y2 = det.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{det.class_name} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2), fill=colour)
        draw.text((x1 + 2, ty), label, fill=(0, 0, 0))
    return np.asarray(canvas)
