"""The out-of-core kernel store: zarr tiles, metadata, a record of completed tiles, integrity."""

from ntkit.store.kernel_store import (FORMAT, CorruptTileError, IncompleteStoreError, KernelStore, StoreError,
                                      StoreMismatchError, StoreRepairWarning, VerifyReport, open_store)
from ntkit.store.lock import StoreLockedError, StoreLockWarning

__all__ = ["FORMAT", "CorruptTileError", "IncompleteStoreError", "KernelStore", "StoreError", "StoreLockedError",
           "StoreLockWarning", "StoreMismatchError", "StoreRepairWarning", "VerifyReport", "open_store"]
