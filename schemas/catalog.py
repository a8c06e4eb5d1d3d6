"""Imports every study's schema module so that all artifact kinds are registered."""
import schemas.common  # noqa: F401
import schemas.sparse_parity  # noqa: F401

try:  # the LM study's schemas (optional until that study lands)
    import schemas.lm  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover
    if e.name != "schemas.lm":
        raise
