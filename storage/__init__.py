"""The artifact store: refs, validated atomic Zarr/Parquet IO, content hashes and lineage."""
from storage.refs import ArtifactRef
from storage.settings import default_store_root
from storage.store import ArtifactMissingError, Store

__all__ = ["ArtifactRef", "ArtifactMissingError", "Store", "default_store_root"]
