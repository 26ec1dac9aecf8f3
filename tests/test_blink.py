"""Eye token input: eye aspect ratio, AU45 calibration, blink detection, the py-feat backend's errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from talk3d_core.face.blink import (
    AU45_MAX,
    DEFAULT_FULL_CLOSURE,
    BlinkBackendError,
    au45_from_ear,
    blink_signal,
    calibrate_au45,
    detect_blinks,
    eye_aspect_ratio,
    pyfeat_au45,
)

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "videos" / "german.mp4").is_file(),
    reason=f"reference clips not found in {SHARED_DATA} (../shared/data)",
)
FPS = 25


def face(gap: float, width: float = 30.0, right_gap: float | None = None) -> np.ndarray:
    """(68, 2) points with two eyes of the given width and lid gap (px); other points on a grid."""
    lm = np.stack(np.meshgrid(np.arange(17.0), np.arange(4.0)), axis=-1).reshape(-1, 2)[:68] * 10 + 200
    for first, cx, g in ((36, 100.0, gap if right_gap is None else right_gap), (42, 160.0, gap)):
        x = cx + width / 2 * np.array([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3])
        y = 100 + g / 2 * np.array([0, -1, -1, 0, 1, 1])
        lm[first : first + 6] = np.stack([x, y], axis=1)
    return lm


def similarity(lm: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return scale * lm @ rot.T + np.asarray(shift)


# ------------------------------------------------------------------------------ eye aspect ratio


def test_ear_of_open_and_closed_eye():
    open_eye, closed = face(gap=9.0), face(gap=0.0)
    ear = eye_aspect_ratio(np.stack([open_eye, closed]))
    # (|p2-p6| + |p3-p5|) / (2 |p1-p4|) = (9 + 9) / (2 * 30)
    np.testing.assert_allclose(ear, [0.3, 0.0], atol=1e-12)
    # A ratio of distances: the same under scale, in-plane rotation and translation.
    moved = similarity(open_eye, 17.0, 2.5, (-40.0, 13.0))
    np.testing.assert_allclose(eye_aspect_ratio(moved[None]), [0.3], atol=1e-12)


def test_ear_weights_eyes_by_width():
    # Under yaw the far eye is narrower: it counts less than the near eye.
    lm = face(gap=9.0)
    lm[36:42, 0] = 100 + (lm[36:42, 0] - 100) * 0.5  # right eye half as wide, same gap
    per_eye = eye_aspect_ratio(lm[None], per_eye=True)[0]
    np.testing.assert_allclose(per_eye, [0.6, 0.3], atol=1e-12)
    np.testing.assert_allclose(eye_aspect_ratio(lm[None]), [(0.6 * 15 + 0.3 * 30) / 45], atol=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 68)), r"shape \(3, 68\), expected \(N, 68, 2\)"),
        (np.zeros((0, 68, 2)), r"expected \(N, 68, 2\) with N >= 1"),
        (
            np.where(np.arange(68)[None, :, None] == 40, np.nan, np.ones((2, 68, 2))),
            r"not finite in 2 frames",
        ),
        (np.ones((2, 68, 2)), r"eye corners 36 and 39 coincide in 2 frames"),
    ],
)
def test_ear_rejects_bad_landmarks(bad, message):
    with pytest.raises(ValueError, match=r"clip\.mp4: .*" + message):
        eye_aspect_ratio(bad, what="clip.mp4")


# ------------------------------------------------------------------------------ AU45 calibration


def ear_trace(n: int, open_ear: float, depth: float, peaks: list[int], seed: int = 0) -> np.ndarray:
    """Open-eye EAR with landmark jitter and 3-frame blinks whose middle frame closes by ``depth``."""
    ear = open_ear * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n))
    for p in peaks:
        ear[p - 1 : p + 2] = open_ear * (1 - depth * np.array([0.5, 1.0, 0.6]))
    return ear


def test_calibration_maps_open_to_zero_and_full_blink_to_two():
    peaks = list(range(40, 1000, 75))
    ear = ear_trace(1000, 0.31, 0.8, peaks)
    cal = calibrate_au45(ear, fps=FPS)
    assert cal["n_calibration_blinks"] == len(peaks)
    assert cal["full_closure"] == pytest.approx(0.8, abs=0.02)
    assert cal["ear_open"] == pytest.approx(0.31, rel=0.03)
    assert cal["ear_closed"] == pytest.approx(0.31 * 0.2, rel=0.1)
    json.dumps(cal)  # stored beside the features for reuse
    au45 = au45_from_ear(ear, cal)
    assert au45.dtype == np.float32 and au45.shape == ear.shape
    assert au45.min() >= 0 and au45.max() <= AU45_MAX
    open_frames = np.ones(len(ear), bool)
    for p in peaks:
        open_frames[p - 2 : p + 3] = False
    assert np.median(au45[open_frames]) < 0.1 and np.percentile(au45[open_frames], 99) < 0.3
    np.testing.assert_allclose(au45[peaks], 2.0, atol=0.1)
    # Closure beyond a full blink clips at 2; an EAR above the open level clips at 0.
    wide = ear.copy()
    wide[500], wide[520] = 0.0, 0.45
    clipped = au45_from_ear(wide, cal)
    assert clipped[500] == AU45_MAX and clipped[520] == 0.0


def test_calibration_is_reused_on_other_footage_of_the_subject():
    cal = calibrate_au45(ear_trace(750, 0.3, 0.7, list(range(30, 750, 60))), fps=FPS)
    # Another clip of the subject, framed differently (its open EAR is higher), with half blinks.
    other = ear_trace(500, 0.36, 0.35, [100, 300], seed=1)
    au45 = au45_from_ear(other, cal)
    np.testing.assert_allclose(au45[[100, 300]], 1.0, atol=0.1)
    _, info = blink_signal(np.stack([face(9.0)] * 10), fps=FPS, calibration=cal)
    assert info["calibration"] is cal


def test_calibration_without_enough_blinks_uses_the_default_depth():
    ear = ear_trace(250, 0.3, 0.6, [100])
    cal = calibrate_au45(ear, fps=FPS)
    assert cal["n_calibration_blinks"] == 1 and cal["full_closure"] == DEFAULT_FULL_CLOSURE
    assert au45_from_ear(ear, cal)[100] == pytest.approx(2 * 0.6 / DEFAULT_FULL_CLOSURE, abs=0.1)


def test_open_level_follows_slow_pose_changes():
    # The open EAR sags by 20% for 8 s (head pitched down): not read as closure; blinks still are.
    ear = ear_trace(1000, 0.3, 0.8, list(range(40, 1000, 90)))
    sag = np.ones(1000)
    sag[400:600] = 0.8
    ear = ear * np.convolve(sag, np.ones(25) / 25, mode="same")
    au45 = au45_from_ear(ear, calibrate_au45(ear, fps=FPS))
    assert np.median(au45[450:550]) < 0.15
    assert au45[490] > 1.8  # the blink during the sag
    global_level = au45_from_ear(ear, calibrate_au45(ear, fps=FPS, baseline_window_s=None))
    assert np.median(global_level[450:550]) > 0.4  # what a single open level would make of it


def test_calibration_errors():
    with pytest.raises(ValueError, match=r"clip: eye aspect ratio is negative or not finite at frame 2"):
        calibrate_au45(np.array([0.3, 0.3, np.nan]), what="clip")
    with pytest.raises(ValueError, match=r"drive: not a talk3d.blink_calibration/1 blink calibration"):
        au45_from_ear(np.full(10, 0.3), {"full_closure": 0.8}, what="drive")
    cal = calibrate_au45(np.full(50, 0.3))
    with pytest.raises(ValueError, match=r"full_closure 0 is not in \(0, 1\]"):
        au45_from_ear(np.full(10, 0.3), {**cal, "full_closure": 0})
    with pytest.raises(ValueError, match=r"blink calibration lacks fps, open_percentile"):
        au45_from_ear(np.full(10, 0.3), {k: v for k, v in cal.items() if k not in ("fps", "open_percentile")})


# ------------------------------------------------------------------------------ blink detection


def test_detect_blinks_on_a_synthetic_trace():
    au45 = np.zeros(400)
    shape = {3: [1.2, 2.0, 0.9], 4: [0.8, 2.0, 1.6, 0.6], 5: [0.6, 1.5, 2.0, 1.2, 0.5]}
    au45[0:3] = shape[3]  # cut by the clip's start
    au45[30:33] = shape[3]
    au45[60:64] = shape[4]
    au45[100:105] = shape[5]
    au45[150:180] = 1.9  # eyes shut for 1.2 s: not a blink
    au45[200] = 1.8  # one-frame landmark glitch
    au45[230:233] = [0.4, 0.8, 0.4]  # partial closure below the threshold
    au45[260:300] = 0.8  # eyes narrowed (looking down) ...
    au45[276:279] = [1.5, 2.0, 1.6]  # ... with a blink on top
    au45[330:340] = [0.8, 2.0, 1.5, 0.7, 0.5, 0.9, 2.0, 1.8, 0.6, 0.2]  # double blink
    blinks = detect_blinks(au45, FPS)
    assert [p for _, p, _ in blinks] == [1, 31, 61, 102, 277, 331, 336]
    assert blinks[0] == (0, 1, 2) and blinks[2] == (60, 61, 63) and blinks[3] == (100, 102, 103)
    assert detect_blinks(au45, FPS, threshold=1.95) == [b for b in blinks if au45[b[1]] >= 1.95]
    # At 50 fps the same frames last half as long: spans of 3 frames are now below the 0.08 s minimum
    # (4 frames), those of 4-5 frames (including each half of the double blink) are not.
    assert [p for _, p, _ in detect_blinks(au45, 50)] == [61, 102, 331, 336]


# ------------------------------------------------------------------------------ clips


def match_blinks(found: list, truth: list, slack: int = 1) -> int:
    """Detected blinks whose peak falls within a true blink's span (+-slack), one-to-one."""
    used, hits = set(), 0
    for _, peak, _ in found:
        for i, (start, _, end) in enumerate(truth):
            if i not in used and start - slack <= peak <= end + slack:
                used.add(i)
                hits += 1
                break
    return hits


def test_demo_clip_blinks_are_found(talking_face):
    truth = talking_face.truth
    au45, info = blink_signal(talking_face.track.lm68, fps=FPS, what="demo")
    closure = np.asarray(truth["blink"])
    true_blinks = detect_blinks(AU45_MAX * closure, FPS)
    assert len(true_blinks) == 3  # at 1.0 s and 5.4 s, and the one the demo draws just before its end
    hits = match_blinks(info["blinks"], true_blinks)
    assert hits == len(true_blinks) == info["n_blinks"], (info["blinks"], true_blinks)
    # Measured 0.97 on this clip (0.95 on the 20 s demo at 512 px).
    assert np.corrcoef(au45, closure)[0, 1] > 0.9
    assert info["blinks_per_minute"] == pytest.approx(30.0)


@needs_shared
def test_german_first_ten_seconds(tmp_path):
    from talk3d_core.ingest import ingest_video
    from talk3d_core.landmarks import detect_landmarks
    from talk3d_core.util.media import run_ffmpeg

    cut = tmp_path / "german_10s.mp4"
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "aac"]
    run_ffmpeg(
        ["-v", "error", "-i", str(SHARED_DATA / "videos" / "german.mp4"), "-t", "10", *encode, str(cut)],
        what="german.mp4",
    )
    ingest_video(cut, tmp_path / "frames", tmp_path / "audio.wav", tmp_path / "meta.json")
    track = detect_landmarks(tmp_path / "frames", what="german.mp4")
    au45, info = blink_signal(track.lm68, fps=FPS, what="german.mp4")
    # One blink, at 5.8 s (frames 144-146, checked on the frames); 6/min over the whole 20 s clip.
    assert [p for _, p, _ in info["blinks"]] == [145], info["blinks"]
    assert au45[145] > 1.4
    assert np.median(au45) < 0.3
    assert info["calibration"]["ear_open"] == pytest.approx(0.31, abs=0.03)


# ------------------------------------------------------------------------------ py-feat backend


def test_pyfeat_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "feat", None)  # as if py-feat were not installed
    with pytest.raises(BlinkBackendError, match=r"needs py-feat.*pip install 'py-feat>=2'.*py-feat/xgb_au"):
        pyfeat_au45([tmp_path / "000000.png"])
    with pytest.raises(BlinkBackendError, match=r"or use the default eye backend 'ear'"):
        blink_signal(np.stack([face(9.0)]), backend="pyfeat", fps=FPS, frames=[tmp_path / "000000.png"])
    with pytest.raises(ValueError, match=r"eye backend 'pyfeat' needs the frame files"):
        blink_signal(np.stack([face(9.0)]), backend="pyfeat", fps=FPS)
    with pytest.raises(ValueError, match=r"unknown eye backend 'openface'; choose one of ear, pyfeat"):
        blink_signal(np.stack([face(9.0)]), backend="openface", fps=FPS)


def fake_pyfeat(monkeypatch, cache: Path, detector_class: type) -> None:
    """Install a stand-in ``feat`` package (py-feat's module layout, its model cache in ``cache``)."""
    feat = types.ModuleType("feat")
    feat.__version__ = "2.1.5"
    feat.Detectorv1 = detector_class
    utils, io = types.ModuleType("feat.utils"), types.ModuleType("feat.utils.io")
    io.get_resource_path = lambda: str(cache)
    feat.utils, utils.io = utils, io
    for name, module in (("feat", feat), ("feat.utils", utils), ("feat.utils.io", io)):
        monkeypatch.setitem(sys.modules, name, module)


def test_pyfeat_models_missing_is_a_clear_error_and_nothing_loads(monkeypatch, tmp_path):
    class NeverBuilt:
        def __init__(self, **kwargs):
            raise AssertionError("the detector must not be built (it would download) when models are missing")

    snapshot = tmp_path / "models--py-feat--mobilefacenet" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "mobilefacenet_model_best.pth.tar").write_bytes(b"weights")
    fake_pyfeat(monkeypatch, tmp_path, NeverBuilt)
    with pytest.raises(BlinkBackendError, match=r"not found in py-feat's model cache") as err:
        pyfeat_au45([tmp_path / "000000.png"])
    assert "py-feat/retinaface_r34/model.safetensors" in str(err.value)
    assert "py-feat/xgb_au/xgb_au_classifier_v2.skops" in str(err.value)
    assert "mobilefacenet_model_best" not in str(err.value).split("model cache")[1].split(";")[0]


def test_pyfeat_output_is_read_per_frame(monkeypatch, tmp_path):
    # Plumbing only: a stand-in Detectorv1 returns a py-feat-shaped table; py-feat itself is not run.
    for repo, name in (
        ("retinaface_r34", "retinaface_r34.safetensors"),
        ("mobilefacenet", "mobilefacenet_model_best.pth.tar"),
        ("xgb_au", "xgb_au_classifier_v2.skops"),
    ):
        snapshot = tmp_path / f"models--py-feat--{repo}" / "snapshots" / "rev"
        snapshot.mkdir(parents=True)
        (snapshot / name).write_bytes(b"weights")
    built = {}

    class Detector:
        def __init__(self, **kwargs):
            built.update(kwargs, offline=__import__("os").environ.get("HF_HUB_OFFLINE"))

        def detect(self, inputs, data_type, batch_size, progress_bar):
            assert data_type == "image" and len(inputs) == 4
            rows = [  # frame, x, y, w, h, score, AU43: frame 1 has a second face, frame 2 none
                (0, 90, 80, 80, 60, 0.99, 0.05),
                (1, 90, 80, 80, 60, 0.90, 0.95),
                (1, 300, 300, 120, 90, 0.99, 0.10),
                (2, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan),
                (3, 92, 80, 80, 60, 0.99, 0.45),
            ]
            columns = [
                "frame",
                "FaceRectX",
                "FaceRectY",
                "FaceRectWidth",
                "FaceRectHeight",
                "FaceScore",
                "AU43",
            ]
            return pd.DataFrame(rows, columns=columns)

    fake_pyfeat(monkeypatch, tmp_path, Detector)
    lm = face(9.0)
    lm68 = np.stack([lm - lm.mean(axis=0) + (130, 110)] * 4)  # the followed face: centre (130, 110)
    frames = [tmp_path / f"{i:06d}.png" for i in range(4)]
    au45 = pyfeat_au45(frames, lm68, max_missing_fraction=0.3)
    np.testing.assert_allclose(au45, [0.1, 1.9, 1.4, 0.9], atol=1e-6)  # frame 2 interpolated
    assert built["au_model"] == "xgb" and built["emotion_model"] is None and built["offline"] == "1"
    with pytest.raises(ValueError, match=r"py-feat found no face in 1 of 4 frames \(first: frame 2\)"):
        pyfeat_au45(frames, lm68)
