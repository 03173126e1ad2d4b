"""Face tracking with MediaPipe FaceMesh in video (tracking) mode -> ``FaceTrack``.

``track_frames`` follows one face with a tracker that may see two (``MediaPipeTracker(max_faces=2)``),
so that a second person is noticed and the right one followed. Such a tracker runs the face
detector on every frame, looking for the second face, which costs 40% of its time.
``track_one_face`` gives the same result faster on footage of one person: a one-face tracker
(which detects only when it has lost the face) and, on another thread, the face detector alone,
whose only job is to notice a second face. If it sees one, the clip is tracked again with the
two-face tracker, so footage with several people gets exactly what ``track_frames`` gives.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np

from .topology import NUM_VERTICES


@dataclass(frozen=True)
class FaceTrack:
    """Members:
        landmarks: float32 (T, V, 3) raw tracked landmarks, in memory or on disk (a
            ``lipsync.files.FrameArray``); x, y in pixels (origin top-left, y down), z in pixels
            (MediaPipe's relative depth scaled by the image width, larger = farther). NaN where no
            face was tracked.
        tracked: bool (T,) True where the tracker returned a face.
        faces_seen: int16 (T,) number of faces the tracker saw in each frame.
        fps: frames per second of the source.
        width, height: frame size in pixels.
    """
    landmarks: np.ndarray
    tracked: np.ndarray
    faces_seen: np.ndarray
    fps: float
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.tracked)


class Tracker(Protocol):
    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        """All faces in an RGB frame as (V, 3) pixel landmarks."""


class MediaPipeTracker:
    """MediaPipe FaceMesh (468 landmarks, no iris refinement) in tracking mode.

    Tracking mode runs the face detector only when it has lost a face and otherwise follows the
    previous frame's landmarks: faster and temporally steadier than per-frame detection.
    ``max_faces=2`` lets us notice (and report) a second person while following one.
    """

    def __init__(self, *, static: bool = False, max_faces: int = 2, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        from mediapipe.python.solutions import face_mesh  # heavy import, done lazily

        self._mesh = face_mesh.FaceMesh(static_image_mode=static, max_num_faces=max_faces, refine_landmarks=False,
                                        min_detection_confidence=min_detection_confidence,
                                        min_tracking_confidence=min_tracking_confidence)

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        h, w = frame.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(frame))
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark[:NUM_VERTICES]], np.float32)
            pts *= np.array([w, h, w], np.float32)
            faces.append(pts)
        return faces

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _box(pts: np.ndarray) -> np.ndarray:
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def choose_face(faces: list[np.ndarray], previous_box: np.ndarray | None) -> np.ndarray:
    """The face to follow: the one overlapping the previous choice most, else the largest."""
    if len(faces) == 1:
        return faces[0]
    boxes = [_box(f) for f in faces]
    if previous_box is not None:
        ious = [_iou(b, previous_box) for b in boxes]
        if max(ious) > 0.3:
            return faces[int(np.argmax(ious))]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return faces[int(np.argmax(areas))]


def track_frames(frames: Iterable[np.ndarray], *, fps: float, width: int, height: int,
                 tracker: Tracker | None = None, on_frame=None, store=None) -> FaceTrack:
    """Track one face through RGB ``frames``.

    Args:
        frames: iterable of RGB uint8 (H, W, 3).
        tracker: a ``Tracker``; by default a ``MediaPipeTracker`` that is closed afterwards.
        on_frame: optional callback ``on_frame(index, frame, landmarks_or_None)`` (progress, caching).
        store: optional ``lipsync.files.FrameArray`` of (N, V, 3) float32 that receives the
            landmarks as they come (resized to the frames tracked) and becomes the track's
            ``landmarks``: memory does not grow with the video's length.
    """
    own = tracker is None
    tracker = tracker or MediaPipeTracker()
    rows: list[np.ndarray] = []
    tracked: list[bool] = []
    seen: list[int] = []
    prev_box = None
    nan = np.full((NUM_VERTICES, 3), np.nan, np.float32)
    try:
        for i, frame in enumerate(frames):
            faces = tracker(frame)
            seen.append(len(faces))
            if faces:
                pts = choose_face(faces, prev_box)
                prev_box = _box(pts)
            else:
                pts = None
            row = nan if pts is None else np.asarray(pts, np.float32)
            tracked.append(bool(np.isfinite(row).all()))
            if store is None:
                rows.append(row)
            else:
                if i >= len(store):
                    store.resize(max(2 * len(store), i + 1))
                store[i] = row
            if on_frame is not None:
                on_frame(i, frame, pts)
    finally:
        if own:
            tracker.close()
    if store is not None:
        store.resize(len(tracked))
        landmarks = store
    else:
        landmarks = np.stack(rows) if rows else np.zeros((0, NUM_VERTICES, 3), np.float32)
    return FaceTrack(landmarks=landmarks, tracked=np.asarray(tracked, bool),
                     faces_seen=np.asarray(seen, np.int16), fps=float(fps), width=int(width), height=int(height))


class FaceDetector:
    """MediaPipe's short-range face detector, the one FaceMesh runs to find faces: the boxes
    (x0, y0, x1, y1, pixels) of every face in an RGB frame."""

    def __init__(self, *, min_detection_confidence: float = 0.5):
        from mediapipe.python.solutions import face_detection  # heavy import, done lazily

        self._det = face_detection.FaceDetection(model_selection=0, min_detection_confidence=min_detection_confidence)

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        h, w = frame.shape[:2]
        boxes = []
        for d in self._det.process(np.ascontiguousarray(frame)).detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append(np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]))
        return boxes

    def close(self) -> None:
        self._det.close()


def another_face(boxes: list[np.ndarray], followed: np.ndarray | None) -> bool:
    """Whether detections ``boxes`` may hold a face other than the ``followed`` one (its (V, 3)
    landmarks, or None when none is followed): two or more faces, or one whose centre lies
    outside the followed face. A two-face tracker would start following such a face."""
    if len(boxes) >= 2:
        return True
    if not boxes or followed is None:
        return False
    lo, hi = np.nanmin(followed[:, :2], axis=0), np.nanmax(followed[:, :2], axis=0)
    centre = (boxes[0][:2] + boxes[0][2:]) / 2
    return not bool(np.all((centre >= lo) & (centre <= hi)))


def track_one_face(frames: Iterable[np.ndarray], *, fps: float, width: int, height: int, retrack,
                   on_frame=None, store=None) -> FaceTrack:
    """``track_frames`` with the two-face tracker, faster on footage of one person (see the module).

    ``retrack()`` returns the frames again from the start; it is called only when a second face
    is seen, to track the clip with the two-face tracker.
    """
    tracker, detector = MediaPipeTracker(max_faces=1), FaceDetector()
    jobs: queue.Queue = queue.Queue(maxsize=8)  # frames waiting for the detector (bounded memory)
    seen = threading.Event()
    failure: list[BaseException] = []

    def detect() -> None:
        while (job := jobs.get()) is not None:
            if seen.is_set() or failure:
                continue  # drain
            frame, followed = job
            try:
                if another_face(detector(frame), followed):
                    seen.set()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(err)

    worker = threading.Thread(target=detect, name="face-detector", daemon=True)
    worker.start()

    def checked(frames_in):
        it = iter(frames_in)
        try:
            for frame in it:
                yield frame
                if seen.is_set() or failure:
                    return  # a second face: tracked again below
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # stops the decoder at once

    def watch(i, frame, pts):
        jobs.put((frame, pts))
        if on_frame is not None:
            on_frame(i, frame, pts)

    try:
        track = track_frames(checked(frames), fps=fps, width=width, height=height, tracker=tracker, on_frame=watch,
                             store=store)
    finally:
        jobs.put(None)
        worker.join()
        tracker.close()
        detector.close()
    if failure:
        raise failure[0]
    if not seen.is_set():
        return track
    with MediaPipeTracker(max_faces=2) as two:
        return track_frames(retrack(), fps=fps, width=width, height=height, tracker=two, on_frame=on_frame,
                            store=store)
