"""Detection metrics: the int8 model's boxes against the float model's (matched-box agreement,
mean IoU of matched boxes, mAP with the float boxes as reference) and against labels (COCO-style
mAP50 and mAP50-95), plus mask IoU and keypoint OKS of matched boxes for -seg and -pose heads."""

from __future__ import annotations

import numpy as np

from npuflow.evaluation.detect import Detections, box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation
MATCH_IOU = 0.5
# COCO keypoint sigmas (17 person keypoints); other layouts weigh every keypoint alike.
COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10


def match(ref: Detections, pred: Detections, iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs (ref index, pred index, IoU): predictions best score first, each to the
    unmatched reference box of its class it overlaps most, at IoU >= `iou`."""
    if not len(ref) or not len(pred):
        return []
    ious = box_iou(pred.boxes, ref.boxes)
    ious[pred.classes[:, None] != ref.classes[None, :]] = 0.0
    taken = np.zeros(len(ref), bool)
    pairs = []
    for j in np.argsort(-pred.scores, kind="stable"):
        row = np.where(taken, 0.0, ious[j])
        i = int(np.argmax(row))
        if row[i] >= iou:
            taken[i] = True
            pairs.append((i, int(j), float(row[i])))
    return pairs


def average_precision(preds: list[Detections], truths: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float] | None:
    """(mAP50, mAP50-95), COCO-style: per class and IoU threshold, predictions best first are
    matched to the unmatched true box they overlap most; AP is the 101-point interpolated area under
    precision/recall; the mean is over classes with true boxes. `truths` are (boxes, classes) per
    image. None when there are no true boxes at all."""
    classes = np.unique(np.concatenate([c for _, c in truths])) if truths else np.zeros(0)
    if not len(classes):
        return None
    ap = np.zeros((len(classes), len(IOU_THRESHOLDS)))
    for ci, c in enumerate(classes):
        n_true = sum(int(np.sum(tc == c)) for _, tc in truths)
        scored = []  # (score, image, box index)
        for img, p in enumerate(preds):
            scored += [(float(p.scores[k]), img, k) for k in np.nonzero(p.classes == c)[0]]
        scored.sort(key=lambda t: -t[0])
        hits = np.zeros((len(scored), len(IOU_THRESHOLDS)), bool)
        taken = {img: np.zeros((int(np.sum(truths[img][1] == c)), len(IOU_THRESHOLDS)), bool) for img in range(len(truths))}
        for n, (_, img, k) in enumerate(scored):
            tb = truths[img][0][truths[img][1] == c]
            if not len(tb):
                continue
            ious = box_iou(preds[img].boxes[k : k + 1], tb)[0]
            for t, threshold in enumerate(IOU_THRESHOLDS):
                cand = np.where(taken[img][:, t], -1.0, ious)
                best = int(np.argmax(cand))
                if cand[best] >= threshold:
                    taken[img][best, t] = True
                    hits[n, t] = True
        for t in range(len(IOU_THRESHOLDS)):
            tp = np.cumsum(hits[:, t])
            recall = tp / n_true
            precision = tp / np.arange(1, len(tp) + 1)
            envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
            idx = np.searchsorted(recall, RECALL_POINTS, side="left")
            ap[ci, t] = float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))
    return float(ap[:, 0].mean()), float(ap.mean())


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.sum(a | b)
    return float(np.sum(a & b) / union) if union else 1.0


def _oks(ref_kpts: np.ndarray, kpts: np.ndarray, ref_box: np.ndarray) -> float | None:
    """Object keypoint similarity of `kpts` to `ref_kpts` (visible reference keypoints only), the
    reference box's area as the object scale."""
    k = len(ref_kpts)
    sigmas = COCO_SIGMAS if k == len(COCO_SIGMAS) else np.full(k, 1.0 / k)
    visible = ref_kpts[:, 2] > 0.5 if ref_kpts.shape[1] == 3 else np.ones(k, bool)
    if not visible.any():
        return None
    area = float(np.prod(np.clip(ref_box[2:] - ref_box[:2], 0, None)))
    d2 = np.sum((ref_kpts[:, :2] - kpts[:, :2]) ** 2, axis=1)
    e = d2 / ((2 * sigmas) ** 2 * (area + 1e-9) * 2)
    return float(np.mean(np.exp(-e)[visible]))


def agreement(refs: list[Detections], preds: list[Detections], pred_scored: list[Detections]) -> dict:
    """The int8 model's detections against the float model's, over all images: `refs` and `preds`
    at the deployment threshold, `pred_scored` at mAP's low threshold. A figure without boxes to
    compare is absent."""
    pairs = [match(r, p) for r, p in zip(refs, preds)]
    matched = sum(len(p) for p in pairs)
    n_ref, n_pred = sum(len(r) for r in refs), sum(len(p) for p in preds)
    out: dict = {"float_boxes_per_image": n_ref / max(len(refs), 1), "boxes_per_image": n_pred / max(len(preds), 1)}
    if n_ref + n_pred:
        out["box_agreement"] = 2.0 * matched / (n_ref + n_pred)
    if matched:
        out["box_iou_mean"] = float(np.mean([iou for p in pairs for _, _, iou in p]))
    ap = average_precision(pred_scored, [(r.boxes, r.classes) for r in refs])
    if ap is not None:
        out["map50_vs_float"], out["map50_95_vs_float"] = ap
    masks = [_mask_iou(r.masks[i], p.masks[j]) for r, p, ps in zip(refs, preds, pairs) if r.masks is not None for i, j, _ in ps]
    if masks:
        out["mask_iou_mean"] = float(np.mean(masks))
    oks = [
        _oks(r.keypoints[i], p.keypoints[j], r.boxes[i])
        for r, p, ps in zip(refs, preds, pairs)
        if r.keypoints is not None
        for i, j, _ in ps
    ]
    oks = [o for o in oks if o is not None]
    if oks:
        out["keypoint_oks_mean"] = float(np.mean(oks))
    return out
