"""The pretrained prior's crop template (talk3d_core.crop_template): w_avg, the reference camera, the
landmarks on the render, the checks, and the JSON the crop stage aligns to.

A random generator draws no face, so the landmark backend here is a stand-in that places a frontal
mean face where the test says (as the rehearsal's FAN stand-in places one in the box it is given).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO_ROOT, random_generator, write_snapshot

from talk3d_core import crop_template as ct
from talk3d_core.camera import EG3D_PIVOT, VIVE3D_FOCAL, VIVE3D_PIVOT, eg3d_camera
from talk3d_core.crop import (
    alignment_points,
    apply_affine,
    canonical_template,
    fit_similarity,
    template_points,
)
from talk3d_core.face.landmark_backends import Face, points_box
from talk3d_core.face.template import MEAN_FACE_68, CropTemplate, read_crop_template, write_crop_template

MANIFEST = REPO_ROOT / "resources/weights/manifest.yaml"
CAMERA = {"focal": VIVE3D_FOCAL, "radius": 2.7, "pivot": list(VIVE3D_PIVOT)}


def placed_face(size: int, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(68, 2) frontal mean face where the fixed template puts it in a ``size`` image, then scaled
    by ``scale`` about the image centre and shifted by ``shift`` px."""
    frontal = MEAN_FACE_68[:, :2] * np.array([1.0, -1.0])
    face = apply_affine(fit_similarity(alignment_points(frontal[None])[0], canonical_template(size)), frontal)
    centre = (size - 1) / 2.0
    return centre + (face - centre) * scale + np.asarray(shift)


class StandInBackend:
    """A landmark backend that finds ``face(size)`` in any image, or nothing when ``face`` is None;
    it records the boxes it was asked to look in."""

    def __init__(self, face, boxes: list) -> None:
        self.face, self.boxes = face, boxes

    def detect(self, image, prior_box):
        self.boxes.append(None if prior_box is None else np.asarray(prior_box).copy())
        if self.face is None:
            return []
        lm68 = self.face(image.shape[0])
        return [Face(box=points_box(lm68), score=1.0, lm68=lm68, native=lm68)]

    def close(self) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch):
    """Install a stand-in backend: call it with a face function (size -> (68, 2)) or None."""
    boxes: list = []

    def install(face):
        monkeypatch.setattr(
            "talk3d_core.metrics.mouth.open_backend", lambda name, **options: StandInBackend(face, boxes)
        )
        return boxes

    return install


def test_sampler_camera_is_vive3d_s_look_at_pose_sampler():
    # Frontal with EG3D's pivot: the frontal camera of camera.py.
    label, angles = ct.sampler_camera(0.0, 0.0, focal=3.5, radius=2.7, pivot=EG3D_PIVOT)
    np.testing.assert_allclose(label, eg3d_camera([0.0], [0.0], [0.0], focal=3.5), atol=1e-12)
    assert angles == pytest.approx((0.0, 0.0), abs=1e-9)
    # The reference view: LookAtPoseSampler(pi/2, pi/2 - 0.1) puts the camera on the sphere at polar
    # angle arccos(1 - 2 v / pi), looking at the pivot; intrinsics focal 3.6, centre 0.5.
    label, (yaw, pitch) = ct.sampler_camera(*ct.REFERENCE_SAMPLER_OFFSETS, **CAMERA)
    phi = np.arccos(1 - 2 * (np.pi / 2 - 0.1) / np.pi)
    origin = 2.7 * np.array([0.0, np.cos(phi), np.sin(phi)])
    cam2world = label[0, :16].reshape(4, 4)
    np.testing.assert_allclose(cam2world[:3, 3], origin, atol=1e-9)
    forward = np.asarray(VIVE3D_PIVOT) - origin
    np.testing.assert_allclose(cam2world[:3, 2], forward / np.linalg.norm(forward), atol=1e-9)
    np.testing.assert_allclose(label[0, 16:], [3.6, 0, 0.5, 0, 3.6, 0.5, 0, 0, 1], atol=1e-12)
    assert yaw == pytest.approx(0.0, abs=1e-9) and pitch < 0  # the camera looks down on the face


def test_expected_face_box_holds_the_fixed_template():
    box = ct.expected_face_box(512)
    points = canonical_template(512)
    assert (points >= box[:2]).all() and (points <= box[2:]).all()
    np.testing.assert_allclose(box, points_box(placed_face(512)))
    assert (box[0] + box[2]) / 2 == pytest.approx(255.5, abs=0.5)  # a symmetric face, centred


def test_framing_difference_recovers_a_known_similarity():
    fixed = canonical_template(512)
    centre = 255.5
    derived = centre + (fixed - centre) * 1.12 + np.array([2.0, -6.0])
    diff = ct.framing_difference(fixed, derived, 512)
    assert diff["scale"] == pytest.approx(1.12, abs=1e-4)
    assert diff["rotation_deg"] == pytest.approx(0.0, abs=1e-3) and diff["residual_px"] < 0.01
    assert diff["derived"]["eye_distance"] == pytest.approx(1.12 * diff["fixed"]["eye_distance"], abs=2e-4)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda lm: lm, None),
        (lambda lm: np.full_like(lm, np.nan), "no face found"),
        (lambda lm: lm @ np.array([[np.cos(0.5), np.sin(0.5)], [-np.sin(0.5), np.cos(0.5)]]), "tilted"),
        (lambda lm: lm * np.array([1, -1]) + np.array([0, 511]), "order"),
        (lambda lm: 255.5 + (lm - 255.5) * 0.2, "eye distance"),
    ],
)
def test_check_template_names_the_checkpoint_and_the_problem(change, problem):
    lm = change(placed_face(512))
    if problem is None:
        ct.check_template(lm, 512, "ckpt.pkl")
        return
    with pytest.raises(ValueError, match=problem) as err:
        ct.check_template(lm, 512, "prior.checkpoint ckpt.pkl")
    assert "ckpt.pkl" in str(err.value)


def test_stage_writes_the_template_the_crop_stage_aligns_to(tmp_path, stand_in):
    checkpoint = write_snapshot(tmp_path / "eg3d.pkl", random_generator())
    boxes = stand_in(lambda size: placed_face(size, 1.12, (0.0, -0.02 * size)))
    out_json, out_png = tmp_path / "crop_template.json", tmp_path / "crop_template.png"
    result = ct.crop_template_stage(
        checkpoint=checkpoint, plane_axes="fixed", camera=CAMERA, landmark_backend="face_alignment",
        weights_dir=tmp_path, manifest=MANIFEST, out_json=out_json, out_png=out_png,
    )  # fmt: skip
    assert out_png.is_file()
    # The first pass looks where the fixed template expects the face (the TINY generator's 32 px
    # render is upsampled to 256 for the backend), the next ones in the box of the face found.
    assert len(boxes) == ct.LANDMARK_PASSES
    np.testing.assert_allclose(boxes[0], ct.expected_face_box(256), atol=1e-6)
    np.testing.assert_allclose(boxes[1], points_box(placed_face(256, 1.12, (0.0, -5.12))), atol=1e-6)
    template = read_crop_template(out_json)
    assert template.name == ct.TEMPLATE_NAME and template.size == 32
    assert template.source["sha256"] == json.loads(out_json.read_text())["source"]["sha256"]
    assert template.source["w_avg"]["samples"] == 10_000
    assert template.source["camera"]["focal"] == VIVE3D_FOCAL
    assert result["framing"]["scale"] == pytest.approx(1.12, rel=0.02)
    # Landmarks found at 256 px come back in the render's pixels; the crop stage rescales them.
    expected = (placed_face(256, 1.12, (0.0, -5.12)) + 0.5) / 8 - 0.5
    np.testing.assert_allclose(template.lm68, expected, atol=1e-3)
    at_512 = template_points(512, template=template)
    face_512 = placed_face(512, 1.12, (0.0, -10.24))
    np.testing.assert_allclose(at_512, alignment_points(face_512[None])[0], atol=0.02)


def test_stage_without_a_face_fails_naming_the_checkpoint(tmp_path, stand_in):
    checkpoint = write_snapshot(tmp_path / "eg3d.pkl", random_generator())
    stand_in(None)
    with pytest.raises(ValueError, match=r"prior\.checkpoint .*eg3d\.pkl.*no face found"):
        ct.crop_template_stage(
            checkpoint=checkpoint, plane_axes="fixed", camera=CAMERA, landmark_backend="face_alignment",
            weights_dir=tmp_path, manifest=MANIFEST,
            out_json=tmp_path / "t.json", out_png=tmp_path / "t.png",
        )  # fmt: skip
    assert (tmp_path / "t.png").is_file() and not (tmp_path / "t.json").exists()  # the render, for a look


def test_template_json_round_trip_and_bad_files(tmp_path):
    template = CropTemplate(name="x", size=512, lm68=placed_face(512), source={"checkpoint": "a.pkl"})
    write_crop_template(template, tmp_path / "t.json", framing={"scale": 1.0})
    back = read_crop_template(tmp_path / "t.json")
    np.testing.assert_allclose(back.lm68, template.lm68, atol=1e-4)
    assert (back.name, back.size, back.source) == ("x", 512, {"checkpoint": "a.pkl"})
    record = json.loads((tmp_path / "t.json").read_text())
    for broken, problem in (
        ({**record, "lm68": record["lm68"][:5]}, "68 finite"),
        ({k: v for k, v in record.items() if k != "size"}, "lacks"),
        ({**record, "size": 2}, "size"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=problem) as err:
            read_crop_template(tmp_path / "bad.json")
        assert "bad.json" in str(err.value)
