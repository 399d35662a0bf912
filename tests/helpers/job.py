"""A small, deterministic store job shared by the crash tests and the subprocess they kill.

`python -m tests.helpers.job PATH [--sleep S] [--features auto|recompute|disk] [--tokens]` fills the
store at PATH (float64, one thread). `--tokens`: the job of a model taking token ids and an
attention mask as keyword arguments, returning a mapping, with a per-token kernel (N, N, T).
"""

from __future__ import annotations

import sys
import time

import torch

N, TILE = 60, 8


def build():
    """The model and inputs of the job: the same in every process."""
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Linear(24, 4)).double()
    x = torch.randn(N, 6, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return model, x


class TokenModel(torch.nn.Module):
    """ids + mask -> {"token_logits": (N, T, C), "logits": (N, C)}; masked tokens change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(17, 8)
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None]
        pooled = h.sum(1) / attention_mask.sum(1, keepdim=True)
        h = torch.tanh(self.mix(h) + pooled[:, None])
        return {"token_logits": self.head(h), "logits": self.head(pooled)}


def token_logits(out):
    return out["token_logits"]


def build_tokens():
    """The token job's model and inputs (a dict; every sample masks a different tail)."""
    torch.manual_seed(4321)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 17, (N // 2, 6), generator=g)
    mask = (torch.arange(6)[None, :] < torch.randint(1, 7, (N // 2, 1), generator=g)).long()
    return TokenModel().double(), {"input_ids": ids, "attention_mask": mask}


def run_tokens(path: str, sleep: float = 0.0, **kw):
    import ntkit

    torch.set_num_threads(1)
    model, x = build_tokens()

    def slow(done, total):
        if sleep:
            time.sleep(sleep)

    return ntkit.compute(model, x, store=path, tile=TILE // 2, memory="200MB", method="jacobian", progress=slow,
                         output_fn=token_logits, diagonal_axes=1, trace_axes=-1, **kw)


def run(path: str, sleep: float = 0.0, output: str = "full", features: str = "recompute", **kw):
    import ntkit

    torch.set_num_threads(1)
    model, x = build()

    def slow(done, total):  # widens the window in which a kill lands mid-run
        if sleep:
            time.sleep(sleep)

    return ntkit.compute(model, x, store=path, output=output, tile=TILE, memory="200MB", method="jacobian",
                         features=features, progress=slow, **kw)


if __name__ == "__main__":
    args = sys.argv[1:]
    sleep = float(args[args.index("--sleep") + 1]) if "--sleep" in args else 0.0
    features = args[args.index("--features") + 1] if "--features" in args else "recompute"
    if "--tokens" in args:
        run_tokens(args[0], sleep=sleep)
    else:
        run(args[0], sleep=sleep, features=features)
    print("done", flush=True)
