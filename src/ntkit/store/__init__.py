"""The out-of-core kernel store: zarr tiles, metadata, a record of completed tiles, integrity."""

from ntkit.store.kernel_store import (FORMAT, IncompleteStoreError, KernelStore, StoreError,
                                      StoreMismatchError, VerifyReport, open_store)

__all__ = ["FORMAT", "IncompleteStoreError", "KernelStore", "StoreError", "StoreMismatchError",
           "VerifyReport", "open_store"]
