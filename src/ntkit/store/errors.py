"""What can go wrong with a kernel store, as exception and warning types."""


class StoreError(ValueError):
    """A kernel store cannot be used as asked (the message names the fix)."""


class StoreMismatchError(StoreError):
    """Resuming a store with another model, data or options."""


class IncompleteStoreError(StoreError):
    """Reading a whole kernel whose tiles are not all computed yet."""


class CorruptTileError(StoreError):
    """A computed tile's data on disk are missing, undecodable or differ from its checksum."""


class StoreRepairWarning(UserWarning):
    """Resuming found recorded tiles whose data were missing or corrupt: they are recomputed."""
