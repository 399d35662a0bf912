"""Only what runs on Dask: the loop that ships `ntkit.tiled`'s per-tile work to workers
(`run`), and what a worker runs: a tile written to the store, the per-worker store cache and
its GPU (`worker`). `ntkit.compute` (`ntkit.tiled.compute`) imports it only when asked for
`workers=` or `client=`."""
