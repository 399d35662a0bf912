"""The out-of-core kernel store: zarr tiles, metadata, a record of completed tiles, integrity."""

from ntkit.store.errors import (CorruptTileError, IncompleteStoreError, StoreError, StoreMismatchError,
                                StoreRepairWarning)
from ntkit.store.kernel_store import FORMAT, KernelStore, open_store
from ntkit.store.verify import VerifyReport
from ntkit.store.lock import StoreLockedError, StoreLockWarning

__all__ = ["FORMAT", "CorruptTileError", "IncompleteStoreError", "KernelStore", "StoreError", "StoreLockedError",
           "StoreLockWarning", "StoreMismatchError", "StoreRepairWarning", "VerifyReport", "open_store"]
