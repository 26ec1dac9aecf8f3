"""The features table: assembly from real stage outputs, split, tokens, and the schema check."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from talk3d_core.camera import camera_table, write_camera_table
from talk3d_core.crop import crop_clip, read_crop_table
from talk3d_core.features import (
    METADATA_KEY,
    crop_landmark_token,
    drive_features,
    floor_silence,
    frame_landmark_token,
    read_features,
    read_features_meta,
    split_by_time,
    subject_features,
)
from talk3d_core.ingest import ingest_audio
from talk3d_core.landmarks import write_landmarks
from talk3d_core.metrics.motion import silent_frames
from talk3d_core.nets.audio_features import frame_features
from talk3d_core.util.io import list_frames
from talk3d_core.util.media import read_wav_float, write_wav


def test_split_is_by_time():
    split = split_by_time(110, 1 / 11)
    assert (split[:100] == "train").all() and (split[100:] == "test").all()
    assert (split_by_time(5, 0.0) == "train").all()
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_time(10, 1.0)


def test_landmark_token_normalisation():
    lm = np.zeros((1, 68, 2))
    lm[0, 30] = [127.5, 127.5]  # crop centre of a 256 crop
    lm[0, 36:42] = [-0.5, -0.5]  # the crop's top-left corner
    lm[0, 42:48] = [255.5, 255.5]  # bottom-right corner
    assert crop_landmark_token(lm, 256).tolist() == [[0.0, 0.0, -1.0, -1.0, 1.0, 1.0]]


def test_frame_token_is_where_the_head_sits_in_the_frame():
    # A 640 x 360 frame: both axes are divided by the width, so y spans [-1, 2 * 360 / 640 - 1].
    lm = np.zeros((2, 68, 2))
    lm[:, 30] = [319.5, 179.5]  # frame centre
    lm[:, 45] = [639.5, 359.5]  # bottom-right corner (the subject's left outer eye corner comes first)
    lm[:, 36] = [-0.5, -0.5]  # top-left corner
    lm[:, 39] = lm[:, 42] = [1000.0, 1000.0]  # inner corners are not part of the token
    expected = [0.0, -0.4375, 1.0, 0.125, -1.0, -1.0]
    np.testing.assert_allclose(frame_landmark_token(lm, 640, 0.0), [expected, expected], atol=1e-6)
    # Smoothed over time like the crop track, shot by shot: a jump at a cut stays a jump.
    rng = np.random.default_rng(0)
    track = np.repeat(lm[:1], 40, axis=0) + rng.normal(0.0, 2.0, (40, 68, 2))
    track[20:, :, 0] += 200.0
    raw, smooth = frame_landmark_token(track, 640, 0.0), frame_landmark_token(track, 640, 2.0, [20])
    assert smooth[:20].std(axis=0).max() < 0.6 * raw[:20].std(axis=0).max()
    assert smooth[20, 0] - smooth[19, 0] > 0.5  # 200 px of 640, not blurred across the cut
    with pytest.raises(ValueError, match="shape"):
        frame_landmark_token(lm[:, :5], 640, 0.0)


@pytest.fixture(scope="module")
def subject(talking_face, tmp_path_factory):
    """The shared synthetic talking clip run on through crop, camera and features."""
    root = tmp_path_factory.mktemp("features")
    face = talking_face
    crop_clip(list_frames(face.frames), face.track.lm68, root / "crops", root / "crop.parquet", size=128)
    crops = read_crop_table(root / "crop.parquet")
    write_camera_table(
        camera_table(crops.lm68, crops.size, focal=3.6, radius=2.7, pivot=(0, 0.05, 0.2)),
        root / "camera.parquet",
    )
    meta = subject_features(
        face.audio, root / "crop.parquet", root / "camera.parquet", root / "features.parquet",
        fps=25, audio_window=8, test_fraction=0.1,
    )  # fmt: skip
    return root, meta, face.truth


def test_subject_table(subject):
    root, meta, truth = subject
    table = read_features(root / "features.parquet", expect={"audio_backend": "mel", "audio_window": 8})
    assert len(table.frame) == 150 and meta["n_train"] == 135 and meta["n_test"] == 15
    assert table.audio.shape == (150, 8, meta["audio_dim"])
    assert np.isfinite(table.audio).all() and np.isfinite(table.eye).all()
    assert table.eye.min() >= 0 and table.eye.max() <= 2
    # Normalised with the clip's own statistics: near zero mean, unit spread over the clip.
    centre = table.audio[:, 8 // 2]
    assert abs(float(centre.mean())) < 0.1 and 0.8 < float(centre.std()) < 1.2
    # The blink value peaks where the synthetic clip blinks.
    blink = np.asarray(truth["blink"])
    assert table.eye[blink > 0.9].mean() > table.eye[blink == 0].mean() + 0.5
    # Rotation comes from the camera table; the landmark token keeps the face near the centre.
    assert np.abs(table.rotation).max() < 30
    assert np.abs(table.ldm).max() < 0.6


def test_drive_features_use_the_subject_statistics(subject, talking_face, tmp_path):
    root, meta, _ = subject
    ingest_audio(talking_face.root / "clip.mp4", tmp_path / "drive.wav", min_duration_s=0.5)
    out = drive_features(tmp_path / "drive.wav", root / "features.parquet", tmp_path / "drive.parquet")
    drive = read_features(tmp_path / "drive.parquet", kind="drive")
    own = read_features(root / "features.parquet")
    assert out["audio_stats"] == meta["audio_stats"] and out["audio_normalise"] is True
    # The same audio through the drive path gives the subject's own features.
    np.testing.assert_allclose(drive.audio, own.audio, atol=1e-5)


@pytest.fixture(scope="module")
def official(subject, talking_face):
    """The fixture clip's features the Talk3D way: frame landmark token, audio not normalised."""
    root = subject[0]
    write_landmarks(talking_face.track, root / "landmarks.parquet")
    meta = subject_features(
        talking_face.audio, root / "crop.parquet", root / "camera.parquet", root / "official.parquet",
        fps=25, audio_window=8, test_fraction=0.1, landmark_token="frame", audio_normalise=False,
        landmarks_parquet=root / "landmarks.parquet",
    )  # fmt: skip
    return root / "official.parquet", meta


def test_frame_token_and_raw_audio_are_recorded_and_used(subject, official, talking_face):
    root = subject[0]
    path, meta = official
    assert meta["landmark_token"] == "frame" and meta["audio_normalise"] is False
    assert meta["audio_stats"] is None
    table = read_features(path, expect={"landmark_token": "frame", "audio_normalise": False})
    crops = read_crop_table(root / "crop.parquet")
    width = talking_face.track.frame_size[0]
    expected = frame_landmark_token(
        talking_face.track.lm68, width, crops.meta["sigma_frames"], crops.meta["cuts"]
    )
    np.testing.assert_array_equal(table.ldm, expected)
    # The head moves in the frame (the demo clip sways it), while the crop pins it in place.
    crop_token = read_features(root / "features.parquet").ldm
    assert table.ldm.std(axis=0).mean() > 1.5 * crop_token.std(axis=0).mean()
    # Unnormalised: the backend's own values at each window's centre row.
    wav, rate = read_wav_float(talking_face.audio)
    raw = frame_features(wav, rate, backend="mel", n_frames=len(table.frame), fps=25)
    np.testing.assert_allclose(table.audio[:, 8 // 2], raw, rtol=1e-6)
    # The same everything else as the default table.
    default = read_features(root / "features.parquet")
    np.testing.assert_array_equal(table.eye, default.eye)
    np.testing.assert_array_equal(table.rotation, default.rotation)
    # A table made with the other kind of token or normalisation is a stale cache.
    for key, value in (("landmark_token", "crop"), ("audio_normalise", True)):
        with pytest.raises(ValueError, match=f"stale cache: recorded {key}"):
            read_features(path, expect={key: value})


def test_drive_features_follow_the_subject_normalisation(official, talking_face, tmp_path):
    path, _ = official
    ingest_audio(talking_face.root / "clip.mp4", tmp_path / "drive.wav", min_duration_s=0.5)
    meta = drive_features(tmp_path / "drive.wav", path, tmp_path / "drive.parquet")
    assert meta["audio_normalise"] is False and meta["audio_stats"] is None
    drive = read_features(tmp_path / "drive.parquet", kind="drive", expect={"audio_normalise": False})
    np.testing.assert_allclose(drive.audio, read_features(path).audio, atol=1e-5)


def test_floored_silence_is_the_same_input_in_every_recording(subject, talking_face, tmp_path):
    root = subject[0]
    wav, rate = read_wav_float(talking_face.audio)
    n = len(read_features(root / "features.parquet").frame)
    # The clip with a pause of room noise at two different levels in its second half.
    quiet = wav.copy()
    half = len(quiet) // 2
    rng = np.random.default_rng(0)
    quiet[half:] = 1e-4 * rng.standard_normal(len(quiet) - half)
    loud = quiet.copy()
    loud[half:] *= 10.0
    made = {}
    crop, camera = root / "crop.parquet", root / "camera.parquet"
    for name, audio in (("quiet", quiet), ("loud", loud)):
        write_wav(tmp_path / f"{name}.wav", np.round(audio * 32767).astype(np.int16), rate)
        made[name] = subject_features(
            tmp_path / f"{name}.wav", crop, camera, tmp_path / f"{name}.parquet", fps=25, audio_window=4,
            audio_silence="floor",
        )  # fmt: skip
    silent = silent_frames(read_wav_float(tmp_path / "quiet.wav")[0], rate, n, 25.0)
    assert silent[n // 2 + 3 : -3].all() and not silent[: n // 4].all()
    assert made["quiet"]["audio_silence"] == "floor"
    # Driving audio through the quiet clip's statistics: its pauses are the subject's pauses.
    drive_features(tmp_path / "loud.wav", tmp_path / "quiet.parquet", tmp_path / "drive.parquet")
    subject_pause = read_features(tmp_path / "quiet.parquet").audio[silent]
    drive = read_features(tmp_path / "drive.parquet", kind="drive", expect={"audio_silence": "floor"})
    inner = silent.copy()
    inner[: n // 2 + 3] = False  # windows wholly inside the pause
    np.testing.assert_allclose(drive.audio[inner], subject_pause[inner[silent]], atol=1e-5)
    # Kept (the official way), the two rooms' noise differ.
    for name in ("quiet", "loud"):
        subject_features(tmp_path / f"{name}.wav", crop, camera, tmp_path / f"kept_{name}.parquet", fps=25)
    kept = [read_features(tmp_path / f"kept_{name}.parquet").audio[silent] for name in ("quiet", "loud")]
    assert np.abs(kept[0] - kept[1]).max() > 1.0
    assert read_features_meta(tmp_path / "kept_quiet.parquet")["audio_silence"] == "keep"
    with pytest.raises(ValueError, match="audio_silence 'floor' needs audio_backend 'mel'"):
        floor_silence(np.zeros((n, 4)), quiet, rate, 25.0, "wav2vec2")


def test_frame_token_needs_the_full_frame_landmarks(subject, talking_face, tmp_path):
    root = subject[0]
    with pytest.raises(ValueError, match="landmarks.parquet"):
        subject_features(
            talking_face.audio, root / "crop.parquet", root / "camera.parquet", tmp_path / "f.parquet",
            fps=25, landmark_token="frame",
        )  # fmt: skip
    with pytest.raises(ValueError, match="landmark_token must be one of crop, frame"):
        subject_features(
            talking_face.audio, root / "crop.parquet", root / "camera.parquet", tmp_path / "f.parquet",
            fps=25, landmark_token="nose",
        )  # fmt: skip


def test_tables_from_before_the_settings_read_as_crop_token_and_normalised(subject, tmp_path):
    src = subject[0] / "features.parquet"

    def legacy(m):
        return {k: v for k, v in m.items() if k not in ("landmark_token", "audio_normalise")}

    old = rewrite(src, tmp_path / "old.parquet", meta=legacy)
    meta = read_features_meta(old)
    assert meta["landmark_token"] == "crop" and meta["audio_normalise"] is True
    with pytest.raises(ValueError, match="stale cache: recorded landmark_token='crop'"):
        read_features(old, expect={"landmark_token": "frame"})


def rewrite(src, dst, *, table=None, meta=None):
    arrow = pq.read_table(src)
    stored = json.loads(arrow.schema.metadata[METADATA_KEY])
    arrow = table(arrow) if table else arrow
    arrow = arrow.replace_schema_metadata(
        {METADATA_KEY: json.dumps(meta(stored) if meta else stored).encode()}
    )
    pq.write_table(arrow, dst)
    return dst


def test_schema_check_rejects_corrupted_tables(subject, tmp_path):
    src = subject[0] / "features.parquet"

    def with_nan(t):
        eye = t.column("eye").to_numpy().copy()
        eye[3] = np.nan
        return t.set_column(t.schema.get_field_index("eye"), "eye", pa.array(eye, pa.float32()))

    cases = {
        "NaN": rewrite(src, tmp_path / "nan.parquet", table=with_nan),
        "columns": rewrite(src, tmp_path / "cols.parquet", table=lambda t: t.drop_columns(["ldm"])),
        "rows": rewrite(src, tmp_path / "rows.parquet", table=lambda t: t.slice(0, 50)),
        "stale cache": rewrite(
            src, tmp_path / "stale.parquet", meta=lambda m: {**m, "audio_backend": "hubert"}
        ),
        "schema version": rewrite(src, tmp_path / "ver.parquet", meta=lambda m: {**m, "version": 0}),
    }
    for problem, path in cases.items():
        with pytest.raises(ValueError, match=problem) as info:
            read_features(path, expect={"audio_backend": "mel"})
        assert str(path) in str(info.value)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match="not a readable Parquet table"):
        read_features(tmp_path / "junk.parquet")
    with pytest.raises(ValueError, match="'subject' features table where a 'drive' one"):
        read_features(src, kind="drive")


def test_metadata_alone_is_read_and_checked(subject, tmp_path):
    root, meta, _ = subject
    assert read_features_meta(root / "features.parquet") == read_features(root / "features.parquet").meta
    with pytest.raises(ValueError, match="'subject' features table where a 'drive' one"):
        read_features_meta(root / "features.parquet", kind="drive")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable Parquet table"):
        read_features_meta(tmp_path / "junk.parquet")
