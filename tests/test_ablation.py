"""The audio ablation's report: the three settings' scores and the paired differences agree."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import brightness_landmarks, moving_head, talking_disc

import talk3d_core.ablation as ablation


def test_differences_are_the_settings_scores_subtracted(tmp_path, monkeypatch):
    data = talking_disc(n=24)
    data.train[:] = np.arange(24) < 8  # 16 held-out frames
    monkeypatch.setattr(ablation, "landmarks_of_images", brightness_landmarks)
    result = ablation.audio_ablation(moving_head(), data, sheet_png=tmp_path / "sheet.png")
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
