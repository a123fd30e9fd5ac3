"""Face restoration: find the faces, restore each one aligned, paste it back softly.

The stage GFPGAN and RestoreFormer are run in (as facexlib's FaceRestoreHelper runs them),
for any face runner (restorer.run.runner.Runner: NCHW float32 in [0, 1] -> the same; the
runner maps value ranges to its network's own):

1. faces are found by dlib's HOG detector with five points each
   (restorer.pipelines.faces.detect_faces; smaller photos are searched upsampled, so faces
   from about 20 px are found);
2. faces smaller than `min_face` px (the detector box's side) are skipped, with a note:
   a network would invent rather than restore them;
3. each face is aligned to the FFHQ five-point template at the runner's size (512 px):
   a similarity transform from cv2.estimateAffinePartial2D with LMEDS, as facexlib;
4. the runner restores the aligned crop;
5. the restored crop is warped back through the inverse transform and blended in with a
   soft mask made in the crop's frame: zero within FEATHER_INSET px of the crop's border,
   rising smoothly (smoothstep, zero slope at both ends) over FEATHER_RAMP px, so no box
   edge shows. `strength` (0..1) blends between the original face (0) and the restored
   one (1).

Only pixels inside a mask's support are composed: every other pixel of the photo is the
input's, bit for bit (a photo with no face, or only skipped ones, comes back unchanged with a
note). The per-face outcome (box, five points, restored or skipped and why, the region that
changed) is returned for the app.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from restorer.pipelines.faces import Face, FacesUnavailable, detect_faces, rgb

# The five points (left eye, right eye, nose tip, left and right mouth corner) of an FFHQ
# face aligned at 512 px: the template GFPGAN, RestoreFormer and CodeFormer take their
# faces in (facexlib's FaceRestoreHelper, face_size 512).
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19366], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
FACE_SIZE = 512  # the aligned size when the runner does not fix one (needs.fixed_tile)
# facexlib pads what lies outside the photo with this grey (RGB; its BGR (135, 133, 132)).
BORDER_RGB = (132 / 255, 133 / 255, 135 / 255)
MIN_FACE = 32  # faces whose detector box is smaller than this (px) are left alone
# The paste-back mask, in pixels of a 512-px aligned crop (scaled with the crop): zero within
# FEATHER_INSET of the crop's border (warping reads a pixel beyond), then a smooth rise over
# FEATHER_RAMP to one. facexlib's erosion + Gaussian ramp is about 50 px at 512.
FEATHER_INSET = 8
FEATHER_RAMP = 64
# The restored crop is shrunk (area filter) before warping back when it is more than this
# many times the face's size in the photo: a bilinear warp from far above would alias.
MAX_WARP_SHRINK = 2.0


@dataclass
class FaceOutcome:
    """What happened to one face, for reports and the app: the detector box (x0, y0, x1, y1,
    exclusive ends), the five points, whether it was restored (else `reason` says why not),
    and the region (x0, y0, x1, y1) whose pixels may have changed (None when skipped)."""

    box: tuple[int, int, int, int]
    landmarks: list[list[float]]
    restored: bool
    reason: str = ""
    region: tuple[int, int, int, int] | None = None

    def as_dict(self) -> dict:
        return {"box": list(self.box), "landmarks": [[round(x, 2), round(y, 2)] for x, y in self.landmarks],
                "restored": self.restored, **({"reason": self.reason} if self.reason else {}),
                **({"region": list(self.region)} if self.region else {})}


@dataclass
class FaceResult:
    """The photo with its faces restored (same shape and dtype as the input pixels), each
    face's outcome, notes for the user, how the faces were found, the aligned crops the
    runner returned (index -> S x S x 3) and, when asked for, the blend mask (H x W float32:
    0 where the input was kept bit for bit)."""

    pixels: np.ndarray
    faces: list[FaceOutcome]
    notes: list[str] = field(default_factory=list)
    detector: str = ""
    crops: dict[int, np.ndarray] = field(default_factory=dict)
    mask: np.ndarray | None = None

    @property
    def restored(self) -> int:
        return sum(f.restored for f in self.faces)


def face_template(size: int = FACE_SIZE) -> np.ndarray:
    """The five template points for an aligned face of `size` px."""
    return FFHQ_TEMPLATE_512 * np.float32(size / 512)


def alignment(landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray | None:
    """The 2 x 3 similarity transform taking photo pixels to the aligned crop, estimated as
    facexlib does (cv2.estimateAffinePartial2D, LMEDS); None when the points are degenerate."""
    points = np.asarray(landmarks, np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(points, face_template(size), method=cv2.LMEDS)
    if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        return None
    return matrix


def align_face(img: np.ndarray, matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The aligned size x size RGB crop (bilinear; outside the photo: facexlib's grey)."""
    return cv2.warpAffine(rgb(img), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB)


def feather_mask(size: int) -> np.ndarray:
    """The paste-back mask in the aligned frame (size x size float32): the product of one
    smooth ramp per axis, 0 within the inset of every border, 1 inside."""
    unit = size / 512
    inset, ramp = FEATHER_INSET * unit, max(1.0, FEATHER_RAMP * unit)
    t = np.arange(size, dtype=np.float64)
    edge = np.minimum(t, size - 1 - t)  # distance to the nearer border, in pixels
    x = np.clip((edge - inset) / ramp, 0.0, 1.0)
    ramp1d = x * x * (3 - 2 * x)  # smoothstep
    return np.outer(ramp1d, ramp1d).astype(np.float32)


def run_face(runner, crop: np.ndarray) -> np.ndarray:
    """The runner on one aligned crop (S x S x 3 in [0, 1]) -> the restored crop, clipped."""
    batch = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
    out = np.asarray(runner(batch), dtype=np.float32)
    if out.shape != batch.shape:
        raise ValueError(f"the face network returned {tuple(out.shape)} for an aligned face of {tuple(batch.shape)}")
    return np.clip(out[0].transpose(1, 2, 0), 0, 1)


def paste_face(out: np.ndarray, restored: np.ndarray, matrix: np.ndarray, strength: float = 1.0,
               mask_sink: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
    """Blend a restored aligned crop back into `out` (H x W x C, changed in place) through the
    inverse of `matrix` (photo -> crop), with the feathered mask times `strength`. Only pixels
    where that mask is above zero are written. Returns the region (x0, y0, x1, y1) that was
    composed, or None when the face lies outside the photo. `mask_sink` (H x W), if given,
    keeps the largest blend weight seen at each pixel."""
    height, width = out.shape[:2]
    size = restored.shape[0]
    mask = feather_mask(size)
    # Shrink first when the crop is far larger than the face in the photo (no aliasing).
    shrink = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop px per photo px
    if shrink > MAX_WARP_SHRINK:
        small = max(8, int(np.ceil(size / shrink * MAX_WARP_SHRINK)))
        r = small / size
        restored = cv2.resize(restored, (small, small), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (small, small), interpolation=cv2.INTER_AREA)
        matrix = np.concatenate([matrix[:, :2] * r, matrix[:, 2:] * r + 0.5 * r - 0.5], axis=1)
        size = small
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[-1, -1, 1], [size, -1, 1], [-1, size, 1], [size, size, 1]], np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1))
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    box = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(restored, shifted, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpAffine(mask, shifted, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(alpha, 0, 1) * np.float32(strength)
    inside = alpha > 0
    if not inside.any():
        return None
    region = out[y0:y1, x0:x1]
    if region.shape[2] == 1:
        face = (np.clip(face, 0, 1) @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    base = region.astype(np.float32)
    blended = base + alpha[:, :, None] * (np.clip(face, 0, 1) - base)
    region[inside] = blended[inside].astype(out.dtype)
    if mask_sink is not None:
        np.maximum(mask_sink[y0:y1, x0:x1], alpha, out=mask_sink[y0:y1, x0:x1])
    ys, xs = np.nonzero(inside)
    return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1


def restore_faces(pixels: np.ndarray, runner, *, strength: float = 1.0, min_face: int = MIN_FACE,
                  faces: list[Face] | None = None, upsample: int | None = None, keep_mask: bool = False,
                  cancel=None, keep: frozenset[int] = frozenset()) -> FaceResult:
    """Restore every face of an H x W x C image (C = 1 or 3, values in [0, 1]) with `runner`.

    `faces`: the faces to restore (e.g. the app's selection); None finds them with dlib
    (`upsample` as restorer.pipelines.faces.detect_faces; raises FacesUnavailable without
    dlib). `keep`: indices (from 0, in the order found) of faces to leave as they are (the
    app's per-face switch). The aligned size is the runner's fixed tile, else FACE_SIZE. Faces
    are cut from the input and composed one after the other. Pixels outside every face's mask support are
    returned bit-identical; with `strength` 0 the whole image is."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, not {strength}")
    detector = "given"
    if faces is None:
        faces, detector = detect_faces(rgb(pixels), upsample=upsample)
    out = np.array(pixels, copy=True)
    result = FaceResult(out, [], detector=detector)
    sink = np.zeros(pixels.shape[:2], np.float32) if keep_mask else None
    result.mask = sink
    if not faces:
        result.notes.append("no face found; the photo is unchanged")
        return result
    needs = getattr(runner, "needs", None)
    size = (getattr(needs, "fixed_tile", None) or FACE_SIZE) if needs is not None else FACE_SIZE
    if needs is not None and getattr(needs, "scale", 1) != 1:
        raise ValueError(f"a face network must keep the size (scale 1), not scale {needs.scale}")
    source = rgb(pixels)
    for k, face in enumerate(faces):
        if cancel is not None and cancel.is_set():
            from restorer.run.tiles import Cancelled

            raise Cancelled("cancelled")
        outcome = FaceOutcome(tuple(int(v) for v in face.box), np.asarray(face.landmarks, float).tolist(), False)
        result.faces.append(outcome)
        if face.side < min_face:
            outcome.reason = f"too small ({face.side} px; faces from {min_face} px are restored)"
            continue
        if strength == 0:
            outcome.reason = "strength 0"
            continue
        if k in keep:
            outcome.reason = "kept as it was (turned off)"
            continue
        matrix = alignment(face.landmarks, size)
        if matrix is None:
            outcome.reason = "its five points do not define an alignment"
            continue
        restored = run_face(runner, align_face(source, matrix, size))
        result.crops[k] = restored
        outcome.region = paste_face(out, restored, matrix, strength, sink)
        outcome.restored = outcome.region is not None
        if not outcome.restored:
            outcome.reason = "outside the photo"
    skipped = [(k, f) for k, f in enumerate(result.faces, 1) if not f.restored]
    if skipped:
        result.notes.append("; ".join(f"face {k} at {f.box[:2]} not restored: {f.reason}" for k, f in skipped))
    if not result.restored:
        result.notes.append("no face restored; the photo is unchanged")
    return result


def run(step, image, ctx, report):
    """The faces step of a restore: the step's model (a catalog face network) through the
    batch's runner cache, strength from the step's options (default 1: the network's face)."""
    from restorer.zoo.catalog import load_catalog

    strength = float(step.options.get("strength", 1.0))
    t = time.perf_counter()
    try:
        faces, detector = detect_faces(rgb(image.pixels))
    except FacesUnavailable as e:
        report.notes.append(f"face restoration skipped: {e}")
        return image
    report.stages.append({"stage": "face-detection", "backend": detector,
                          "seconds": round(time.perf_counter() - t, 3), "faces": len(faces)})
    runner = None
    if any(f.side >= MIN_FACE for f in faces) and strength > 0:
        runner = ctx.cache.network(load_catalog().get(step.model), ctx.device)
        report.ran(runner)
    t = time.perf_counter()
    keep = frozenset(int(k) for k in step.options.get("keep_faces", ()))  # the app's per-face switch
    result = restore_faces(image.pixels, runner, strength=strength, faces=faces, cancel=ctx.cancel, keep=keep)
    result.detector = detector
    report.stages.append({"stage": "face-restoration", "backend": step.model,
                          "seconds": round(time.perf_counter() - t, 3), "restored": result.restored,
                          "strength": strength})
    for k, outcome in enumerate(result.faces):
        report.stages.append({"stage": f"face-{k + 1:02d}", "backend": step.model if outcome.restored else "skipped",
                              **outcome.as_dict()})
        if k in result.crops:
            ctx.stage_images[f"face-{k + 1:02d}"] = result.crops[k]
    report.notes.extend(n for n in result.notes if n not in report.notes)
    if ctx.progress is not None:
        ctx.progress(1, 1)
    return image.with_pixels(result.pixels)
