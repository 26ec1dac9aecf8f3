"""Head proxy: template placement is recovered from projected landmarks, the proxy volume is sane, and
the geometry-prior terms are finite and pull the tri-planes towards it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY, tiny_subject

from talk3d_core.camera import eg3d_camera
from talk3d_core.face.template import MEAN_FACE_68
from talk3d_core.model.head_proxy import EMPTY_RADIUS, SOLID_RADIUS, HeadProxy, fit_head_proxy, project_points
from talk3d_core.model.personalized import PersonalizedGenerator
from talk3d_core.prior import PriorConfig, geometry_losses, prior_sheet, train_scratch_prior

PROXY = HeadProxy(scale=0.00205, mideye=(0.0, 0.06, 0.195), rms_px=0.0)


def _cameras(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yaw, pitch, roll = rng.uniform(-20, 20, n), rng.uniform(-15, 15, n), rng.uniform(-5, 5, n)
    return eg3d_camera(yaw, pitch, roll, radius=2.7, pivot=(0, 0.05, 0.2), focal=3.6)


def test_projection_of_the_pivot_is_the_image_centre():
    labels = _cameras(5)
    uv, distance = project_points(np.array([[0.0, 0.05, 0.2]]), labels)
    np.testing.assert_allclose(uv, 0.5, atol=1e-9)
    np.testing.assert_allclose(distance[:, 0], np.linalg.norm(labels[:, [3, 7, 11]] - [0, 0.05, 0.2], axis=1))
    uv_t, distance_t = project_points(torch.tensor(PROXY.landmarks()), torch.tensor(labels))
    uv_n, distance_n = project_points(PROXY.landmarks(), labels)
    np.testing.assert_allclose(uv_t.numpy(), uv_n, atol=1e-9)
    np.testing.assert_allclose(distance_t.numpy(), distance_n, atol=1e-9)


def test_fit_recovers_scale_and_position():
    labels, size = _cameras(40), 256
    truth = HeadProxy(scale=0.0019, mideye=(0.01, 0.07, 0.18), rms_px=0.0)
    uv, _ = project_points(truth.landmarks(), labels)
    lm = uv * size - 0.5 + np.random.default_rng(1).normal(0, 0.5, uv.shape)
    fit = fit_head_proxy(lm, labels, size, frames=np.arange(30))
    assert fit.scale == pytest.approx(truth.scale, rel=0.01)
    np.testing.assert_allclose(fit.mideye, truth.mideye, atol=2e-3)
    assert 0.4 < fit.rms_px < 1.0  # the noise, 0.5 px per axis


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="crop.parquet: need landmarks"):
        fit_head_proxy(np.zeros((3, 5, 2)), _cameras(3), 256, what="crop.parquet")
    with pytest.raises(ValueError, match="no frames"):
        fit_head_proxy(np.zeros((3, 68, 2)), _cameras(3), 256, frames=[])


def test_proxy_volume():
    points = torch.tensor(PROXY.landmarks(), dtype=torch.float32)
    inner = points[[27, 28, 36, 45]]  # nasion, nose bridge and eye corners: on or in the head
    assert (PROXY.radius(inner) < 1.1).all()
    assert PROXY.radius(torch.tensor([[0.0, 0.06, 0.5], [0.45, 0.45, 0.45]])).min() > EMPTY_RADIUS
    generator = torch.Generator().manual_seed(0)
    solid = PROXY.sample_solid(500, generator)
    assert solid.shape == (500, 3) and (PROXY.radius(solid) < SOLID_RADIUS + 1e-5).all()
    empty = PROXY.sample_empty(2000, 1.0, generator)
    assert 1000 < len(empty) < 2000 and (PROXY.radius(empty) > EMPTY_RADIUS).all()
    assert empty.abs().max() <= 0.5
    # The face ellipsoid reaches the chin and the template's face lies in front of the cranium.
    assert PROXY.radius(points[8:9]) < 1.1 and MEAN_FACE_68[30, 2] > 0


def test_geometry_terms_have_finite_gradients_on_an_empty_scene():
    """A fresh generator can render rays with no density at all; the depth term must not turn
    them into NaN gradients (0/0 in the depth's weighted mean)."""
    model = PersonalizedGenerator(TINY, 2, seed=0)
    with torch.no_grad():  # kill all density: the decoder's sigma logit becomes very negative
        model.generator.decoder.net[-1].bias[0] = -200.0
    cameras = torch.tensor(_cameras(2), dtype=torch.float32)
    out = model(torch.arange(2), cameras)
    person = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    terms = geometry_losses(model, out, cameras, person, PROXY, PriorConfig(shape_points=64))
    assert set(terms) == {"depth", "opacity", "solid", "empty", "total"}
    terms["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    no_matte = geometry_losses(
        model, model(torch.arange(2), cameras), cameras, None, PROXY, PriorConfig(shape_points=64)
    )
    assert set(no_matte) == {"depth", "solid", "total"}


def test_training_with_the_proxy_fills_its_core(tmp_path):
    base = tiny_subject()
    data = dataclasses.replace(base, person=base.face.clone(), proxy=PROXY)
    cfg = PriorConfig(steps=40, batch_size=2, checkpoint_every=40, shape_points=256)
    model = train_scratch_prior(data, tmp_path, gen_config=TINY, prior_config=cfg)
    torch.manual_seed(0)
    solid = PROXY.sample_solid(512)
    empty = PROXY.sample_empty(512, TINY.box_warp)
    fresh = PersonalizedGenerator(TINY, int(data.train.sum()), seed=0)
    with torch.no_grad():
        for m in (fresh, model):
            m.eval()
        before = fresh.occupancy(fresh.generator.planes(fresh.w_id), torch.cat([solid, empty])[None])[0]
        after = model.occupancy(model.generator.planes(model.w_id), torch.cat([solid, empty])[None])[0]
    # The core gets denser than the empty margin, which it was not at initialisation.
    gap_before = before[: len(solid)].mean() - before[len(solid) :].mean()
    gap_after = after[: len(solid)].mean() - after[len(solid) :].mean()
    assert gap_after > gap_before + 0.08, (gap_before, gap_after)
    sheet = prior_sheet(
        model, tmp_path / "sheet.png", radius=2.7, pivot=(0, 0.05, 0.2), focal=3.6, proxy=PROXY
    )
    assert [(v["yaw"], v["pitch"]) for v in sheet["views"]][:3] == [(-30.0, 20.0), (0.0, 20.0), (30.0, 20.0)]
    for view in sheet["views"]:
        assert 0 <= view["semi_transparent"] <= 1 and np.isfinite(view["landmark_depth_mm"])
