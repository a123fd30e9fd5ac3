"""Faces in a photo: where they are and their five alignment points, offline.

Detection is dlib's HOG frontal-face detector, as in the official pipeline; it ships
inside the `dlib-bin` wheel (Boost licence, no model file to fetch). The five points
(eye centres, nose tip, mouth corners) come from
- dlib's 68-point landmark model when the `face-recognition-models` package is installed:
  exactly the official method, but that model was trained on iBUG 300-W and may not be used
  commercially, so it is only used when the user installs it;
- otherwise from the detection box: the mean positions of the five points inside a dlib
  HOG box of a frontal face (measured with the 68-point model), which aligns frontal faces
  well enough for the enhancer, whose output is colour-matched and feathered back in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# (x, y) of left eye, right eye, nose tip, left and right mouth corner, as fractions of a
# dlib HOG box (left, top, width, height), for a frontal face.
BOX_LANDMARKS = np.array([[0.28, 0.31], [0.72, 0.31], [0.50, 0.575], [0.32, 0.80], [0.68, 0.80]])


def rgb(img: np.ndarray) -> np.ndarray:
    """H x W x 3 float32: gray is repeated, alpha is dropped (PIL convert('RGB') drops it too)."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def landmarks_from_68(points: np.ndarray) -> np.ndarray:
    """dlib's 68 points -> the official 5 (integer eye centres, nose tip, mouth corners)."""
    p = np.asarray(points, dtype=np.int64)
    left = (p[36] + p[39]) // 2
    right = (p[42] + p[45]) // 2
    return np.stack([left, right, p[30], p[48], p[54]]).astype(np.float64)


class FacesUnavailable(RuntimeError):
    pass


def _detector():
    try:
        import dlib
    except ImportError:
        raise FacesUnavailable("no face detector installed (pip install 'restorer[faces]' adds dlib-bin)") from None
    return dlib


@functools.cache
def _hog():
    """dlib's HOG face detector, built once per process (building it takes most of a second)."""
    return _detector().get_frontal_face_detector()


def _landmark_model(dlib):
    try:
        import face_recognition_models
    except ImportError:
        return None
    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def _pixels(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(rgb(img) * 255 + 0.5, 0, 255).astype(np.uint8))


# Photos up to this size are searched at twice their size too (dlib's HOG finds faces from
# about 80 px, 40 px upsampled); larger ones only as they are, to keep it to about a second.
UPSAMPLE_MAX_PIXELS = 2_000_000


def find_face_boxes(img: np.ndarray) -> tuple[list[tuple[int, int, int, int]], str]:
    """(x0, y0, x1, y1) of each face in an HxWx3 [0, 1] image (x1, y1 exclusive, clipped to
    the image), and how they were found. Used to keep edits away from faces, so small faces
    are searched for too. Raises FacesUnavailable without dlib."""
    detector = _hog()
    pixels = _pixels(img)
    height, width = pixels.shape[:2]
    upsample = 1 if height * width <= UPSAMPLE_MAX_PIXELS else 0
    boxes = []
    for box in detector(pixels, upsample):
        x0, y0 = max(0, box.left()), max(0, box.top())
        x1, y1 = min(width, box.right() + 1), min(height, box.bottom() + 1)
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes, "dlib HOG detector" + (" (upsampled once)" if upsample else "")


def find_faces(img: np.ndarray) -> tuple[list[np.ndarray], str]:
    """Five (x, y) points per face in an HxWx3 [0, 1] image, and how they were found."""
    faces, how = detect_faces(img, upsample=0)  # no upsampling, as the official code
    return [face.landmarks for face in faces], how


@dataclass(frozen=True)
class Face:
    """One detected face: its detector box (x0, y0, x1, y1; x1, y1 exclusive, clipped to the
    image) and its five points (eye centres, nose tip, mouth corners) as a 5 x 2 (x, y) array."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray

    @property
    def side(self) -> int:
        """The detector box's longer side in pixels: how large the face is."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


# Searching at twice (four times) the size finds faces from about 40 (20) px instead of 80;
# the cost grows with the pixels searched, so only smaller photos are searched that way.
UPSAMPLE_TWICE_MAX_PIXELS = 500_000


def auto_upsample(height: int, width: int) -> int:
    """How many times dlib's HOG search doubles an image of this size: 2 up to 0.5 MP, 1 up
    to UPSAMPLE_MAX_PIXELS, else 0 (faces from about 20, 40 and 80 px respectively)."""
    pixels = height * width
    return 2 if pixels <= UPSAMPLE_TWICE_MAX_PIXELS else 1 if pixels <= UPSAMPLE_MAX_PIXELS else 0


def detect_faces(img: np.ndarray, upsample: int | None = None) -> tuple[list[Face], str]:
    """Every face dlib's HOG detector finds in an HxWx3 [0, 1] image, with its box and five
    points, and how they were found. `upsample` None: from the image's size (auto_upsample).
    Raises FacesUnavailable without dlib."""
    dlib = _detector()
    pixels = _pixels(img)
    height, width = pixels.shape[:2]
    if upsample is None:
        upsample = auto_upsample(height, width)
    boxes = _hog()(pixels, upsample)
    predictor = _landmark_model(dlib)
    faces = []
    for box in boxes:
        if predictor is not None:
            shape = predictor(pixels, box)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)])
            landmarks = landmarks_from_68(points)
        else:
            origin = np.array([box.left(), box.top()], float)
            size = np.array([box.width(), box.height()], float)
            landmarks = origin + BOX_LANDMARKS * size
        x0, y0 = max(0, box.left()), max(0, box.top())
        x1, y1 = min(width, box.right() + 1), min(height, box.bottom() + 1)
        faces.append(Face((x0, y0, x1, y1), landmarks))
    how = "dlib HOG detector + " + ("68-point landmarks (non-commercial model)" if predictor is not None
                                    else "box-proportional landmarks")
    if upsample:
        how += f" (upsampled {'once' if upsample == 1 else f'{upsample} times'})"
    return faces, how
