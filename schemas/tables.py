"""The base of every table schema: exactly the declared columns (pandera `strict`), no coercion: a table with a column
too many or missing, or of another dtype, fails validation naming the column."""
from __future__ import annotations

import pandera.pandas as pa


class StrictTable(pa.DataFrameModel):
    class Config:
        strict = True
        coerce = False


__all__ = ["StrictTable"]
