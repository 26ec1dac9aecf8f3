"""The audio ablation's report: the three settings' scores and the paired differences agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NET, face_landmarks, talking_disc, tiny_prior

import talk3d_core.ablation as ablation
from talk3d_core.model.talking_head import TalkingHead


def fake_landmarks(images, backend: str = "mediapipe", **_) -> np.ndarray:
    """A landmark 'detector' whose mouth opens with the brightness of the image's lower half."""
    images = np.asarray(list(images), dtype=np.float64)
    opening = images[:, images.shape[1] // 2 :].mean(axis=(1, 2, 3)) / 8
    return np.concatenate([face_landmarks(o) for o in opening])


def test_differences_are_the_settings_scores_subtracted(tmp_path, monkeypatch):
    data = talking_disc(n=24)
    data.train[:] = np.arange(24) < 8  # 16 held-out frames
    torch.manual_seed(0)
    prior = tiny_prior()
    head = TalkingHead(prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2)
    with torch.no_grad():  # leave the zero start, so that each setting renders something else
        for p in head.net.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    monkeypatch.setattr(ablation, "landmarks_of_images", fake_landmarks)
    result = ablation.audio_ablation(head.eval(), data, sheet_png=tmp_path / "sheet.png")
    assert result["frames"] == 16 and (tmp_path / "sheet.png").is_file()
    assert "truth" not in result  # a clip with no drawn truth (test_truth: one with)
    settings = result["settings"]
    assert settings["full"]["lmd"] != settings["no_audio"]["lmd"]  # the audio token changes the render
    for other in ("no_audio", "identity"):
        d = result["differences"][f"full-{other}"]
        assert d["frames"] == 16
        for key in ("lmd", "opening_mae", "opening_correlation"):
            if settings[other][key] is None:  # one camera, and no audio: a mouth that never moves
                assert key == "opening_correlation"
                assert d[key] == {"difference": None, "ci95": None}
                continue
            expected = settings["full"][key] - settings[other][key]
            assert d[key]["difference"] == pytest.approx(expected, abs=1e-9)
            lo, hi = d[key]["ci95"]
            assert lo <= expected <= hi
