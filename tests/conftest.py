"""Test-suite settings: one torch thread per worker (tiny ops are slower multi-threaded, and
pytest-xdist already runs one worker per core)."""

import torch

torch.set_num_threads(1)
