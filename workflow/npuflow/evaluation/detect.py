"""Host post-processing of YOLO detection heads, as the vendor model zoos run it on the board's CPU
after the NPU: per scale, threshold the class logits (in logit space, so only the anchors above it
are decoded), decode their boxes (DFL: softmax over the distance bins and its expectation; a head
without DFL gives the distances directly), then class-aware NMS. Segmentation heads add each
kept box's mask (coefficients × prototypes), pose heads its keypoints. numpy only: it runs where
the ONNX stages run, without torch.

The outputs are the export's (npuflow.sources.ultralytics): split per scale (`box_s8`, `cls_s8`,
`mask_s8`/`kpt_s8`, …, `proto`) or Ultralytics' own decoded `output` (`head: full`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ultralytics' defaults: deployment threshold of its predictor, NMS IoU, detections kept, and the
# candidates NMS considers at most; boxes of different classes are kept apart by this offset.
CONF = 0.25
IOU = 0.7
MAX_DET = 300
MAX_NMS = 30000
CLASS_OFFSET = 7680.0


@dataclass
class Detections:
    """One image's detections: boxes [n, 4] (x1, y1, x2, y2 in input pixels), scores [n], classes
    [n]; masks [n, h, w] (bool, at the prototypes' resolution) and keypoints [n, k, 2|3] when the
    head has them."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + e^-x), without overflow


def _dfl(box: np.ndarray, reg_max: int) -> np.ndarray:
    """[4 * reg_max, n] distance-bin logits -> [4, n] distances (the expectation over the bins)."""
    if reg_max == 1:
        return box
    d = box.reshape(4, reg_max, -1).astype(np.float64)
    d = np.exp(d - d.max(axis=1, keepdims=True))
    d /= d.sum(axis=1, keepdims=True)
    return np.einsum("abn,b->an", d, np.arange(reg_max, dtype=np.float64))


def _candidates_split(outputs: dict, head: dict, conf: float):
    """Anchors whose best class clears `conf`, decoded: (xyxy, scores, classes, extras)."""
    threshold = np.log(conf / (1 - conf))  # sigmoid(x) > conf  <=>  x > logit(conf)
    boxes, scores, classes, extras = [], [], [], []
    for s in head["strides"]:
        cls = outputs[f"cls_s{s}"][0]
        w = cls.shape[2]
        cls = cls.reshape(cls.shape[0], -1)
        best = cls.argmax(axis=0)
        best_logit = cls[best, np.arange(cls.shape[1])]
        keep = np.nonzero(best_logit > threshold)[0]
        ax, ay = keep % w + 0.5, keep // w + 0.5
        dist = _dfl(outputs[f"box_s{s}"][0].reshape(4 * head["reg_max"], -1)[:, keep], head["reg_max"])
        boxes.append(np.stack([ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]], axis=1) * s)
        scores.append(_sigmoid(best_logit[keep].astype(np.float64)))
        classes.append(best[keep])
        if head["kind"] == "segment":
            extras.append(outputs[f"mask_s{s}"][0].reshape(head["masks"], -1)[:, keep].T)
        elif head["kind"] == "pose":
            k, dims = head["keypoints"]
            kp = outputs[f"kpt_s{s}"][0].reshape(k * dims, -1)[:, keep].T.reshape(-1, k, dims).astype(np.float64)
            centre = np.stack([ax, ay], axis=1)[:, None, :]
            # yolo26 offsets keypoints from the cell centre, the others from its corner at twice the scale
            yolo26 = head.get("keypoint_decode") == "yolo26"
            xy = (kp[..., :2] + centre) * s if yolo26 else (kp[..., :2] * 2.0 + centre - 0.5) * s
            extras.append(np.concatenate([xy, _sigmoid(kp[..., 2:3])], axis=2) if dims == 3 else xy)
    joined = [np.concatenate(a) if a else None for a in (boxes, scores, classes, extras)]
    return joined[0], joined[1], joined[2].astype(np.int64), joined[3]


def _candidates_full(outputs: dict, head: dict, conf: float):
    """The same from Ultralytics' decoded output [1, 4 + classes + extra, anchors] (xywh, sigmoid scores)."""
    out = outputs["output"][0].T.astype(np.float64)
    nc = head["classes"]
    scores = out[:, 4 : 4 + nc]
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(out)), best]
    keep = np.nonzero(best_score > conf)[0]
    xy, wh = out[keep, :2], out[keep, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    extra = out[keep, 4 + nc :]
    if head["kind"] == "pose":
        extra = extra.reshape(len(keep), *head["keypoints"])
    return boxes, best_score[keep], best[keep].astype(np.int64), extra if head["kind"] != "detect" else None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [n, 4] with every box of `b` [m, 4] (xyxy): [n, m]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS: indices kept, best first; a box overlapping a kept one by more than `iou` goes.
    Stops once `max_keep` boxes are kept (the rest would be cut anyway)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        order = order[1:][box_iou(boxes[i : i + 1], boxes[order[1:]])[0] <= iou]
    return np.asarray(keep, np.int64)


def _masks(coeffs: np.ndarray, proto: np.ndarray, boxes: np.ndarray, input_hw) -> np.ndarray:
    """Each box's mask at the prototypes' resolution: sigmoid(coefficients · prototypes) > 0.5,
    cropped to the box (as Ultralytics' process_mask)."""
    nm, mh, mw = proto.shape
    masks = _sigmoid(coeffs.astype(np.float64) @ proto.reshape(nm, -1).astype(np.float64)).reshape(-1, mh, mw) > 0.5
    scaled = boxes * np.array([mw / input_hw[1], mh / input_hw[0]] * 2)
    rows, cols = np.arange(mh)[None, :, None] + 0.5, np.arange(mw)[None, None, :] + 0.5
    inside = (
        (cols >= scaled[:, 0, None, None])
        & (cols < scaled[:, 2, None, None])
        & (rows >= scaled[:, 1, None, None])
        & (rows < scaled[:, 3, None, None])
    )
    return masks & inside


def candidates(outputs: dict, head: dict, conf: float):
    """Every anchor whose best class clears `conf`, decoded, before NMS, in anchor order (scale by
    scale): (boxes xyxy, scores, classes, extras: mask coefficients or keypoints, or None)."""
    return (_candidates_full if "output" in outputs else _candidates_split)(outputs, head, conf)


def postprocess(outputs: dict, head: dict, input_hw, conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET) -> Detections:
    """One image's model outputs ({name: array with batch 1}) to its detections."""
    boxes, scores, classes, extra = candidates(outputs, head, conf)
    if len(scores) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, classes, extra = boxes[top], scores[top], classes[top], None if extra is None else extra[top]
    keep = nms(boxes + classes[:, None] * CLASS_OFFSET, scores, iou, max_det)
    found = Detections(boxes[keep], scores[keep], classes[keep])
    if head["kind"] == "segment":
        found.masks = _masks(extra[keep], outputs["proto"][0], found.boxes, input_hw)
    elif head["kind"] == "pose":
        found.keypoints = extra[keep]
    return found
