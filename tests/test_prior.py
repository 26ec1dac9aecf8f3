"""Scratch prior: the fit improves, resume is exact, evaluation and contact sheet work (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, tiny_subject
from PIL import Image

from talk3d_core.prior import PriorConfig, evaluate_prior, prior_sheet, train_scratch_prior
from talk3d_core.util.runs import Run


def test_fit_improves_and_evaluates(tmp_path):
    data = tiny_subject()
    model = train_scratch_prior(
        data, tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=60, batch_size=2, checkpoint_every=30)
    )
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    first, last = np.mean([r["l1"] for r in log[:10]]), np.mean([r["l1"] for r in log[-10:]])
    assert last < 0.7 * first, (first, last)
    metrics = evaluate_prior(model, data)
    assert metrics["n_train"] == 6 and metrics["n_test"] == 2
    assert np.isfinite(metrics["train_psnr"]) and np.isfinite(metrics["test_psnr"])
    assert metrics["n_train_scored"] == 6 and metrics["n_test_scored"] == 2
    subset = evaluate_prior(model, data, max_frames=2)
    assert subset["n_train"] == 6 and subset["n_train_scored"] == 2 and subset["n_test_scored"] == 2
    assert np.isfinite(subset["train_psnr"])
    sheet = prior_sheet(model, tmp_path / "sheet.png", radius=2.7, pivot=(0, 0.05, 0.2), focal=3.6)
    image = Image.open(tmp_path / "sheet.png")
    assert image.size == (6 * 32, 3 * 32)
    near, far = sheet["depth_range"]
    assert TINY.ray_start <= near < far <= TINY.ray_end  # a depth map with structure, inside the ray range


def test_resume_is_exact(tmp_path):
    data = tiny_subject()
    cfg = PriorConfig(steps=6, batch_size=2, checkpoint_every=3)
    straight = train_scratch_prior(data, tmp_path / "a", gen_config=TINY, prior_config=cfg)
    # Stop after 3 steps (as a killed job would, at its last checkpoint), then run on to 6.
    train_scratch_prior(
        data, tmp_path / "b", gen_config=TINY, prior_config=PriorConfig(steps=3, batch_size=2)
    )
    resumed = train_scratch_prior(data, tmp_path / "b", gen_config=TINY, prior_config=cfg)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # A kill after the last checkpoint leaves extra log lines; resuming drops them and logs again.
    with open(tmp_path / "b" / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 7, "l1": 0.0}) + "\n")
    train_scratch_prior(
        data, tmp_path / "b", gen_config=TINY, prior_config=PriorConfig(steps=6, batch_size=2)
    )
    steps = [json.loads(r)["step"] for r in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_settings(tmp_path):
    data = tiny_subject()
    train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=1, batch_size=2))
    with pytest.raises(ValueError, match="written with other settings"):
        train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=2, batch_size=3))


def test_restart_parks_the_old_checkpoint_and_switching_back_resumes_it(tmp_path):
    """A re-run with other settings must not throw away a finished prior: it is kept by its settings."""
    data = tiny_subject()
    cfg = PriorConfig(steps=3, batch_size=2)
    first = train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=cfg)
    train_scratch_prior(
        data, tmp_path, gen_config=TINY, prior_config=cfg, run_id="new code", restart_on_mismatch=True
    )
    parked = list((tmp_path / "checkpoints").glob("*.pt"))
    assert [p.stem.rpartition("-")[2] for p in parked] == ["000000003"]
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3  # the new run's own log
    # Back to the first settings: the parked run resumes at its last step, no step runs again.
    back = train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=cfg, restart_on_mismatch=True)
    assert back.steps_run == 3
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in first.state_dict().items())
    log = [json.loads(r) for r in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    # Both runs are kept: the "new code" one is parked now.
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1
    assert not list((tmp_path / "checkpoints").glob(f"{parked[0].stem}.*"))


def test_periodic_checkpoints_are_throttled_in_time_and_counted(tmp_path, monkeypatch):
    """Bounded bytes per hour: with the default interval a fast run saves only at its end."""
    monkeypatch.delenv("TALK3D_CHECKPOINT_INTERVAL_S")
    cfg = PriorConfig(steps=6, batch_size=2, checkpoint_every=1)
    saves = []
    real_save = Run.save
    monkeypatch.setattr(
        Run, "save", lambda self, state: saves.append(state["step"]) or real_save(self, state)
    )
    train_scratch_prior(tiny_subject(), tmp_path / "slow", gen_config=TINY, prior_config=cfg)
    assert saves == [6]
    monkeypatch.setenv("TALK3D_CHECKPOINT_INTERVAL_S", "0")
    saves.clear()
    train_scratch_prior(tiny_subject(), tmp_path / "every", gen_config=TINY, prior_config=cfg)
    assert saves == [1, 2, 3, 4, 5, 6]


def test_long_runs_log_progress_and_the_step_log_is_current(tmp_path, monkeypatch, caplog):
    from talk3d_core.util import runs

    monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 0.0)
    run = Run(tmp_path, {"settings": 1}, total=3, device=torch.device("cpu"), desc="prior")
    with caplog.at_level("INFO", logger="talk3d_core.util.runs"), run:
        run.step({"step": 1, "l1": 0.5})
        # Line-buffered: a reader (or a killed job's next run) sees the line at once.
        assert (tmp_path / "train_log.jsonl").read_text() == '{"step": 1, "l1": 0.5}\n'
    assert "prior: step 1/3" in caplog.text and "min left" in caplog.text


def test_progress_lines_follow_batches(caplog):
    from talk3d_core.util.runs import Progress, map_batches

    progress = Progress("evaluate x", 10, unit="image", every_s=0.0)
    with caplog.at_level("INFO", logger="talk3d_core.util.runs"):
        doubled = map_batches(lambda batch: batch * 2, np.arange(10), 4, progress, "doubling")
        Progress("quiet", 10, every_s=3600.0).update(5)  # not due: no line
    np.testing.assert_array_equal(doubled, np.arange(10) * 2)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"evaluate x: image {n}/10" for n in (4, 8, 10)]
    assert lines[-1].endswith("s/image, about 0 min left (doubling)")


def test_divergence_names_only_a_checkpoint_that_exists(tmp_path):
    from talk3d_core.util.runs import check_finite

    terms, values = {"l1": None, "ssim": None}, [0.5, float("nan")]
    with pytest.raises(FloatingPointError, match=r"non-finite ssim\); no checkpoint was written yet in"):
        check_finite(terms, values, "prior", 1, tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FloatingPointError, match=r"checkpoint\.pt holds the last good state"):
        check_finite(terms, values, "prior", 1, tmp_path / "checkpoint.pt")


def test_checkpoint_of_other_data_is_not_resumed(tmp_path):
    data = tiny_subject()
    train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=2, batch_size=2))
    data.cameras[0, 3] += 0.01  # a re-tracked camera
    with pytest.raises(ValueError, match="written with other settings"):
        train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=2, batch_size=2))


def test_a_long_clip_is_memory_mapped_not_held_in_ram(tmp_path, monkeypatch):
    """Frames over the in-RAM budget go to unlinked memory-mapped files: same values, nothing left."""
    import tempfile

    from talk3d_core.model.subject import load_subject

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
        Image.fromarray(rng.integers(0, 7, (16, 16), dtype=np.uint8)).save(tmp_path / f"m{i}.png")
        paths.append((tmp_path / f"c{i}.png", tmp_path / f"m{i}.png"))
    crops, masks = zip(*paths, strict=True)
    args = (crops, masks, np.zeros((3, 25), np.float32), np.ones(3, bool), 8)
    in_ram = load_subject(*args)
    spill = tmp_path / "scratch"
    spill.mkdir()
    monkeypatch.setenv("TALK3D_FRAMES_IN_RAM_BYTES", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    mapped = load_subject(*args)
    for name in ("crops", "face", "person", "mouth"):
        a, b = getattr(in_ram, name), getattr(mapped, name)
        assert torch.equal(a, b) and a.shape == b.shape, name
    # File-backed pages of the deleted files (the OS can page them out), not heap.
    mapped_files = [line for line in open("/proc/self/maps").read().splitlines() if str(spill) in line]
    assert len(mapped_files) >= 4 and all("talk3d-frames-" in f and "(deleted)" in f for f in mapped_files)
    assert list(spill.iterdir()) == []  # the files were unlinked at once
    assert in_ram.fingerprint() == mapped.fingerprint()


def test_load_subject_paints_the_background(tmp_path):
    from talk3d_core.model.subject import load_subject

    crop = np.full((8, 8, 3), 200, np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 1  # a skin square on background
    Image.fromarray(crop).save(tmp_path / "c.png")
    Image.fromarray(labels).save(tmp_path / "m.png")
    cams = np.zeros((1, 25), np.float32)
    kept = load_subject(
        [tmp_path / "c.png"], [tmp_path / "m.png"], cams, np.array([True]), 8, background="keep"
    )
    black = load_subject([tmp_path / "c.png"], [tmp_path / "m.png"], cams, np.array([True]), 8)
    assert (kept.crops == 200).all() and kept.crops.dtype == torch.uint8
    assert (black.crops[0, :, 0, 0] == 0).all() and torch.equal(
        black.crops[0, :, 3, 3], kept.crops[0, :, 3, 3]
    )
    assert black.face.sum() == 16 and kept.fingerprint() != black.fingerprint()
    # The person mask (for the opacity term) exists only when the background is painted out.
    assert kept.person is None and black.person.sum() == 16
    with pytest.raises(ValueError, match="background must be"):
        load_subject([tmp_path / "c.png"], [tmp_path / "m.png"], cams, np.array([True]), 8, background="blue")


def test_fewer_steps_than_a_finished_run_start_over_and_are_recorded(tmp_path):
    """Lowering the budget after a finished run must not hand on the longer-trained model."""
    data = tiny_subject()
    longer = PriorConfig(steps=6, batch_size=2, checkpoint_every=3)
    shorter = PriorConfig(steps=4, batch_size=2, checkpoint_every=2)
    assert train_scratch_prior(data, tmp_path / "run", gen_config=TINY, prior_config=longer).steps_run == 6
    with pytest.raises(ValueError, match="trained for 6 steps, 4 asked"):
        train_scratch_prior(data, tmp_path / "run", gen_config=TINY, prior_config=shorter)
    again = train_scratch_prior(
        data, tmp_path / "run", gen_config=TINY, prior_config=shorter, restart_on_mismatch=True
    )
    fresh = train_scratch_prior(data, tmp_path / "fresh", gen_config=TINY, prior_config=shorter)
    assert again.steps_run == fresh.steps_run == 4
    a, b = again.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "run/train_log.jsonl").read_text().splitlines()) == 4
