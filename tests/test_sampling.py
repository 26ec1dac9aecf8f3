import numpy as np

from talk3d_core.util.sampling import evenly_spaced


def test_evenly_spaced_ends_distinct_and_all_when_few():
    pick = evenly_spaced(455, 100)
    assert len(pick) == 100 and pick[0] == 0 and pick[-1] == 454
    assert np.all(np.diff(pick) >= 4)  # distinct and spread, never clumped
    assert evenly_spaced(6, 100).tolist() == list(range(6))
    assert evenly_spaced(5, 1).tolist() == [0]
