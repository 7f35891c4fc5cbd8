"""The result type every selection rule returns."""

from __future__ import annotations

from typing import NamedTuple

import jax

__all__ = ["Selection"]


class Selection(NamedTuple):
    """Selected pool indices and their acquisition values.

    Attributes:
      indices: [k] int32 pool indices, in pick order (best first for top-k rules).
      values: [k] float, the acquisition value of each pick when it was picked.
        Under `jax.vmap` both gain the mapped leading axes.
    """

    indices: jax.Array
    values: jax.Array
