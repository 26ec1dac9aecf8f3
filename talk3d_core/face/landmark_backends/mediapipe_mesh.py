"""MediaPipe face mesh backend (mediapipe 0.10.21, ``mp.solutions`` graph): 478 points -> iBUG 68.

The face mesh runs in tracking mode: the landmark model is fed the region found from the previous
frame's landmarks and the BlazeFace detector only runs when fewer than ``max_faces`` faces are
tracked. When a tracked face is lost the same frame is processed again at once, so the detector
re-acquires the face on that frame instead of leaving it empty.

The per-face confidence is the landmark model's face-presence score (sigmoid, 0..1), the value
MediaPipe thresholds with ``min_tracking_confidence``. The stock ``FaceMesh`` solution does not
return it, so this module observes two internal streams of the expanded
``face_landmark_front_cpu`` graph of mediapipe 0.10.21 (one packet per face, paired by timestamp).

The 68-point layout is a fixed weighted average of mesh vertices per iBUG point
(:data:`MESH_TO_IBUG68`), fitted to dlib's 68-point predictor on real frames; how it was made and
how close it comes: docs/decisions.md#mediapipe-mesh-to-the-68-ibug-points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from talk3d_core.face.landmark_backends import Face, points_box

#: Native points: 468 mesh vertices + 10 iris points (refine_landmarks=True).
N_MESH_POINTS = 478

# Per iBUG 300-W point (0-based): (mesh vertex, weight) pairs; the weights of a point sum to 1.
MESH_TO_IBUG68: tuple[tuple[tuple[int, float], ...], ...] = (
    # jaw 0-16, from the subject's right (image left) over the chin
    ((127, 0.63), (139, 0.37)),
    ((234, 1.0),),
    ((93, 1.0),),
    ((215, 0.54), (132, 0.46)),
    ((172, 0.56), (58, 0.44)),
    ((136, 1.0),),
    ((149, 0.54), (150, 0.46)),
    ((176, 0.57), (148, 0.43)),
    ((152, 1.0),),
    ((400, 0.57), (377, 0.43)),
    ((378, 0.54), (379, 0.46)),
    ((365, 1.0),),
    ((397, 0.56), (288, 0.44)),
    ((435, 0.54), (361, 0.46)),
    ((323, 1.0),),
    ((454, 1.0),),
    ((356, 0.63), (368, 0.37)),
    # brows 17-21 (subject's right), 22-26 (left), outer to inner / inner to outer
    ((70, 0.51), (46, 0.2), (156, 0.29)),
    ((63, 0.75), (105, 0.25)),
    ((105, 0.61), (66, 0.39)),
    ((66, 0.57), (65, 0.43)),
    ((55, 0.52), (107, 0.48)),
    ((285, 0.52), (336, 0.48)),
    ((296, 0.57), (295, 0.43)),
    ((334, 0.61), (296, 0.39)),
    ((293, 0.75), (334, 0.25)),
    ((300, 0.51), (276, 0.2), (383, 0.29)),
    # nose bridge 27-30 (30 = tip), lower nose 31-35
    ((168, 0.84), (6, 0.16)),
    ((197, 0.77), (6, 0.23)),
    ((5, 0.7), (197, 0.3)),
    ((1, 0.54), (5, 0.46)),
    ((75, 0.73), (79, 0.27)),
    ((20, 1.0),),
    ((2, 0.69), (94, 0.31)),
    ((250, 1.0),),
    ((305, 0.73), (309, 0.27)),
    # subject's right eye 36-41: outer corner, upper lid, inner corner, lower lid
    ((7, 0.59), (246, 0.27), (33, 0.14)),
    ((159, 0.58), (160, 0.42)),
    ((158, 0.68), (157, 0.32)),
    ((155, 0.79), (173, 0.21)),
    ((153, 0.54), (22, 0.19), (145, 0.27)),
    ((144, 0.88), (24, 0.12)),
    # subject's left eye 42-47: inner corner, upper lid, outer corner, lower lid
    ((382, 0.79), (398, 0.21)),
    ((385, 0.68), (384, 0.32)),
    ((386, 0.58), (387, 0.42)),
    ((249, 0.59), (466, 0.27), (263, 0.14)),
    ((373, 0.88), (254, 0.12)),
    ((380, 0.54), (252, 0.19), (374, 0.27)),
    # outer lips 48-59: right corner, upper lip, left corner, lower lip
    ((61, 1.0),),
    ((42, 0.13), (74, 0.41), (39, 0.46)),
    ((37, 0.77), (38, 0.23)),
    ((11, 0.79), (0, 0.21)),
    ((267, 0.77), (268, 0.23)),
    ((272, 0.13), (304, 0.41), (269, 0.46)),
    ((291, 1.0),),
    ((405, 0.63), (321, 0.37)),
    ((314, 1.0),),
    ((17, 1.0),),
    ((84, 1.0),),
    ((181, 0.63), (91, 0.37)),
    # inner lips 60-67: right corner, upper lip (62 = middle), left corner, lower lip (66 = middle)
    ((96, 0.53), (78, 0.47)),
    ((82, 0.83), (81, 0.17)),
    ((13, 1.0),),
    ((312, 0.83), (311, 0.17)),
    ((325, 0.53), (308, 0.47)),
    ((317, 0.51), (316, 0.37), (402, 0.12)),
    ((15, 0.48), (14, 0.52)),
    ((87, 0.51), (86, 0.37), (178, 0.12)),
)


def _mapping_matrix() -> np.ndarray:
    """(68, 468) matrix M with lm68 = M @ mesh[:468]."""
    matrix = np.zeros((68, 468), dtype=np.float64)
    for k, pairs in enumerate(MESH_TO_IBUG68):
        for vertex, weight in pairs:
            matrix[k, vertex] += weight
    return matrix


_MESH_TO_68 = _mapping_matrix()


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """iBUG 68 points (..., 68, D) from MediaPipe mesh points (..., 468 or 478, D) in any units."""
    mesh = np.asarray(mesh)
    if mesh.ndim < 2 or mesh.shape[-2] not in (468, N_MESH_POINTS):
        raise ValueError(f"expected mesh points of shape (..., 468 or 478, D), got {mesh.shape}")
    return np.einsum("kv,...vd->...kd", _MESH_TO_68, mesh[..., :468, :].astype(np.float64))


# Graph of mp.solutions.face_mesh and the internal streams observed per face (mediapipe 0.10.21).
_GRAPH = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"
_LANDMARKS_STREAM = "face_landmarks"
_PRESENCE_STREAM = "facelandmarkcpu__face_presence_score"
_DETECTION_THRESHOLD = (
    "facedetectionshortrangecpu__facedetectionshortrange__facedetection__TensorsToDetectionsCalculator"
    ".min_score_thresh"
)
_TRACKING_THRESHOLD = "facelandmarkcpu__ThresholdingCalculator.threshold"


class _PacketLists(dict):
    """Output collector: SolutionBase's observer assigns one packet per call; keep them all."""

    def __setitem__(self, stream: str, packet: Any) -> None:
        self.setdefault(stream, []).append(packet)


def _face_mesh_graph(
    *,
    max_faces: int,
    static_image_mode: bool,
    min_detection_confidence: float,
    min_tracking_confidence: float,
) -> Any:
    """A started face mesh graph whose ``faces(image)`` returns [(landmarks (478, 3), presence)]."""
    from mediapipe.python.solution_base import SolutionBase

    class FaceMeshGraph(SolutionBase):
        def __init__(self) -> None:
            super().__init__(
                binary_graph_path=_GRAPH,
                side_inputs={
                    "num_faces": max_faces,
                    "with_attention": True,  # refine_landmarks: eye, lip and iris refinement
                    "use_prev_landmarks": not static_image_mode,
                },
                calculator_params={
                    _DETECTION_THRESHOLD: min_detection_confidence,
                    _TRACKING_THRESHOLD: min_tracking_confidence,
                },
                outputs=[_LANDMARKS_STREAM, _PRESENCE_STREAM],
            )
            self._graph_outputs = _PacketLists()

        def faces(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
            self._graph_outputs.clear()
            self._simulated_timestamp += 40_000  # microseconds; only needs to increase
            image_type = self._input_stream_type_info["image"]
            packet = self._make_packet(image_type, image).at(self._simulated_timestamp)
            self._graph.add_packet_to_input_stream(stream="image", packet=packet)
            self._graph.wait_until_idle()
            # Within one frame every face is processed at its own loop timestamp on both streams.
            scores = {}
            for p in self._graph_outputs.get(_PRESENCE_STREAM, []):
                value = self._get_packet_content(self._output_stream_type_info[_PRESENCE_STREAM], p)
                if value is not None:
                    scores[p.timestamp.value] = float(value)
            found = []
            for p in self._graph_outputs.get(_LANDMARKS_STREAM, []):
                landmarks = self._get_packet_content(self._output_stream_type_info[_LANDMARKS_STREAM], p)
                if landmarks is None or p.timestamp.value not in scores:
                    continue
                xyz = np.array([(q.x, q.y, q.z) for q in landmarks.landmark], dtype=np.float64)
                found.append((xyz, scores[p.timestamp.value]))
            return found

    return FaceMeshGraph()


class MediapipeMeshBackend:
    """MediaPipe face mesh with refined eyes, lips and irises (478 native points).

    Args:
        max_faces: faces tracked at once; more than one lets a competing face be seen (and keeps the
            detector running each frame, which costs little next to the mesh model).
        min_detection_confidence: BlazeFace score needed to start tracking a face.
        min_tracking_confidence: face-presence score below which a track is dropped and the face
            is detected again (on the same frame).
        static_image_mode: detect on every frame instead of tracking (slower, for unrelated images).
    """

    name = "mediapipe"
    n_native = N_MESH_POINTS

    def __init__(
        self,
        *,
        max_faces: int = 3,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        static_image_mode: bool = False,
    ) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        for label, value in (
            ("min_detection_confidence", min_detection_confidence),
            ("min_tracking_confidence", min_tracking_confidence),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value}")
        self._settings = {
            "max_faces": int(max_faces),
            "min_detection_confidence": float(min_detection_confidence),
            "min_tracking_confidence": float(min_tracking_confidence),
            "static_image_mode": bool(static_image_mode),
        }
        self._graph = _face_mesh_graph(**self._settings)
        self._tracking = False  # a face was found in the previous frame

    def options(self) -> dict[str, Any]:
        import mediapipe

        return {**self._settings, "refine_landmarks": True, "mediapipe": mediapipe.__version__}

    def detect(self, image: np.ndarray, prior_box: np.ndarray | None) -> list[Face]:
        """All faces the mesh finds in an RGB uint8 frame (H, W, 3); ``prior_box`` is not needed
        (the graph tracks by itself)."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        found = self._graph.faces(image)
        if not found and self._tracking and not self._settings["static_image_mode"]:
            # The track was lost on this frame: with no face left to track, the graph runs the
            # detector on the next input, so give it this frame again.
            found = self._graph.faces(image)
        self._tracking = bool(found)
        height, width = image.shape[:2]
        faces = []
        for xyz, presence in found:
            # Normalised [0, 1] image coordinates -> pixel-centre convention.
            native = np.stack([xyz[:, 0] * width - 0.5, xyz[:, 1] * height - 0.5], axis=1)
            faces.append(
                Face(
                    box=points_box(native[:468]),
                    score=float(np.clip(presence, 0.0, 1.0)),
                    lm68=mesh_to_ibug68(native),
                    native=native,
                )
            )
        return faces

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None
