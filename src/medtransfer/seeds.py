"""One range for every seed a user can give: 0 .. 2**32 - 1.

That is what numpy's legacy RandomState and Lightning's ``seed_everything`` accept; numpy's Generator refuses
negative seeds. Outside it a run used to fail deep inside numpy with a traceback, so seeds are checked where they
are given: config keys when the file is validated, a dataset's ``seed`` option before its loader runs.
"""

from __future__ import annotations

from pydantic import Field
from typing_extensions import Annotated

from medtransfer.errors import DataError

SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description=f"an integer from 0 to {SEED_MAX}")]


def check_seed(value, where: str) -> int:
    """``value`` if it is a seed, else a DataError naming ``where``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise DataError(f"{where}: seed={value!r}; allowed: an integer from 0 to {SEED_MAX}")
    return value
