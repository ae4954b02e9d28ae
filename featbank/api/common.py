"""What the API modules share: the types their signatures take, and the default ``warn``."""
from __future__ import annotations

import os
from typing import Sequence

from featbank.data.tasks import SplitSpec

PathLike = str | os.PathLike
# "80/10/10", three fractions such as (0.7, 0.1, 0.2), or a SplitSpec (SplitSpec.of)
SplitLike = str | Sequence[float] | SplitSpec


def quiet(message: str) -> None:
    """Where notes go when the caller passes no ``warn``."""
