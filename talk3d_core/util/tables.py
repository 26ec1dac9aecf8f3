"""Vector columns of the per-frame Parquet tables (landmarks, crop, camera, features).

A per-frame vector (a 2x3 affine, 68 landmarks, an audio window) is stored as one fixed-size list of
float32 per row, so a reader can check its length and get an (N, ...) array back in one step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_list_array(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(N, ...) values -> a float32 fixed-size-list column of ``width`` numbers per row."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def fixed_list_values(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 list column -> (N, *shape) float32 array; ValueError if a row has another length."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        raise ValueError(f"expected a list column, got {column.type}")
    width = int(np.prod(shape))
    if pa.types.is_list(column.type):
        lengths = np.diff(column.offsets.to_numpy())
        if np.any(lengths != width):
            raise ValueError(f"expected {width} values per row")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(column), *shape)
