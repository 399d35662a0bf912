"""Process-level helpers: the bottom layer of ntkit (see docs/architecture.md).

`scratch` (large buffers reused between calls), `malloc` (glibc allocator thresholds), `rss`
(the process's resident memory, which memory budgets bound), `precision` (matmul precision:
TF32 switches and the tf32x3 Gram step), `files` (the one atomic file write), `blocks` (the one
block slicer), `flops` (forward FLOPs for the cost model). Nothing here imports from the rest of
ntkit.
"""
