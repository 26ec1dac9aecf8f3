import numpy as np
import pytest
import torch

from talk3d_core.nets.opening_reader import fit_opening_reader, gaussian_blur


def _mouths(openings: np.ndarray, size: int = 16) -> torch.Tensor:
    """Patches (N, 3, size, size) in [-1, 1]: light skin with a dark slot ``opening`` px tall."""
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    patches = []
    for opening in openings:
        slot = ((rows - size / 2).abs() <= opening / 2) & ((cols - size / 2).abs() <= size / 4)
        patches.append(torch.where(slot, -0.8, 0.6).expand(3, size, size))
    return torch.stack(patches)


def test_reader_learns_the_opening_of_unseen_mouths():
    rng = np.random.default_rng(0)
    opening = rng.uniform(0, 8, 120)
    patches = _mouths(opening)
    train, test = np.arange(80), np.arange(80, 120)
    reader = fit_opening_reader(patches, opening, train, steps=300, seed=0)
    with torch.no_grad():
        read = reader.pixels(patches[test]).numpy()
    assert np.corrcoef(read, opening[test])[0, 1] > 0.9
    assert not any(p.requires_grad for p in reader.parameters()) and not reader.training
    # a function of the seed only
    again = fit_opening_reader(patches, opening, train, steps=300, seed=0)
    pairs = zip(reader.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_reader_leaves_out_frames_without_landmarks_and_needs_a_spread():
    opening = np.array([1.0, np.nan, 3.0, 5.0])
    reader = fit_opening_reader(_mouths(np.nan_to_num(opening)), opening, np.arange(4), steps=2, seed=0)
    assert reader.mean.item() == pytest.approx(3.0) and np.isfinite(reader.std.item())
    with pytest.raises(ValueError, match="different openings"):
        fit_opening_reader(_mouths(np.ones(4)), np.ones(4), np.arange(4), steps=2)


def test_gaussian_blur_keeps_flat_images_and_the_mean():
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred.max() < 0.2
