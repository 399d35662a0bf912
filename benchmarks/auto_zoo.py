"""Does `method="auto"` pick the fastest method on models the project never calibrated on?

Fourteen architectures of the kinds people compute eNTKs of (none of them from tests/zoo.py or
benchmarks/workloads.py): MLPs of three widths, LeNet-5, a VGG-style and a ResNet-style CNN with
BatchNorm, a depthwise-separable (MobileNet-style) CNN, WRN-10-2, an MLP-Mixer, a ViT and a BERT
encoder (tiny `transformers` configs, no downloads; BERT gets dict inputs with an attention mask),
an LSTM text classifier over token ids, a U-Net-style segmenter with a pooled head, and the
LayerNorm + GELU block over 16-token sequences of issue 16 (N = 128, width 96, full).

For each architecture and output mode, in this one process, interleaved (round robin over the
methods, `--repeats` rounds, the start rotating each round, the median reported): `ntkit.ntk`
with method="jacobian", "ntk-vp", "structured", "auto" cold (a fresh deep copy of the model for
every call, so the time includes everything auto does to decide) and "auto" warm (the same
model, plan cache kept), and the torch.func tutorial's Jacobian contraction (imported from
ntk_methods.py). Every kernel is compared with method="jacobian"'s (`agree`: relative error
<= 1e-3, float32); a method that disagrees does not count as the fastest.

    python benchmarks/auto_zoo.py                         # everything (see benchmarks/README.md)
    python benchmarks/auto_zoo.py --quick                 # smoke run, well under a minute
    python benchmarks/auto_zoo.py --models bert,ln-gelu-seq --outputs full --repeats 5
    python benchmarks/auto_zoo.py --readme                # the README table from --out's JSON

Writes OUT/auto_zoo.json (every time, the machine, load averages, the exact command) and
OUT/auto_zoo.md (the table and the regret summary). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import math
import os
import shlex
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ntk_methods import _machine_info, _ntkit_source, _tutorial

import ntkit
import ntkit.engine.cache

DEFAULT_OUT = HERE / "results" / "auto_zoo"
QUICK_OUT = HERE / "results" / "auto_zoo_quick"
NTKIT_METHODS = ("jacobian", "ntk-vp", "structured")
COLUMNS = (*NTKIT_METHODS, "auto", "auto-warm", "tutorial")  # timed side by side
# First calls: each method on a fresh copy of the model (its analysis, vmap check and plan
# included), timed for the methods whose warm-up came within COLD_WITHIN of the quickest one:
# auto's first call is compared with the fastest method's first call.
COLD_COLUMNS = tuple(f"{m}-cold" for m in NTKIT_METHODS)
COLD_WITHIN = 1.5
AGREE_RTOL = 1e-3


# ================================================================================== the zoo
def _mlp(width: int, depth: int) -> nn.Module:
    """1x28x28 flattened, `depth` hidden layers of `width`, ReLU, 10 logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = 28 * 28
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))


def _conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def _vgg_bn(w: int) -> nn.Module:
    """VGG-style: [conv-BN-ReLU]x2 per stage, max pools, widths w, 2w, 4w; 3x32x32."""
    return nn.Sequential(
        *_conv_bn(3, w), *_conv_bn(w, w), nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * w * 16, 10))


class _Block(nn.Module):
    """A pre-2016 ResNet basic block with BatchNorm and a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Sequential(*_conv_bn(c_in, c_out, stride))
        self.b = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(self.a(x)) + self.skip(x))


def _resnet_bn(w: int) -> nn.Module:
    return nn.Sequential(*_conv_bn(3, w), _Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def _mobilenet(w: int) -> nn.Module:
    """Depthwise 3x3 + pointwise 1x1 blocks (MobileNet v1), BatchNorm, 3x32x32."""
    def ds(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [*_conv_bn(c_in, c_in, stride, groups=c_in), *_conv_bn(c_in, c_out, k=1)]
    return nn.Sequential(*_conv_bn(3, w, 2), *ds(w, 2 * w, 1), *ds(2 * w, 4 * w, 2), *ds(4 * w, 4 * w, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


class _Mixer(nn.Module):
    """MLP-Mixer (Tolstikhin et al. 2021): 4x4 patches of 3x32x32, token- and channel-mixing MLPs."""

    def __init__(self, dim: int, depth: int, patch: int = 4, size: int = 32) -> None:
        super().__init__()
        t = (size // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln1": nn.LayerNorm(dim), "tok": nn.Sequential(nn.Linear(t, t // 2), nn.GELU(), nn.Linear(t // 2, t)),
                           "ln2": nn.LayerNorm(dim), "ch": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))})
            for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)  # (N, T, dim)
        for b in self.blocks:
            h = h + b["tok"](b["ln1"](h).transpose(1, 2)).transpose(1, 2)
            h = h + b["ch"](b["ln2"](h))
        return self.head(self.ln(h).mean(1))


class _TextLSTM(nn.Module):
    """Token ids (N, T) -> embedding -> one-layer LSTM -> last hidden state -> 4 classes."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


class _UNet(nn.Module):
    """Two-level U-Net on 1x28x28 (28 -> 14 -> 7 -> 14 -> 28, skip concatenations) whose per-pixel
    class map is average-pooled into 10 logits."""

    def __init__(self, w: int) -> None:
        super().__init__()
        def conv(c_in: int, c_out: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())
        self.e1, self.e2, self.mid = conv(1, w), conv(w, 2 * w), conv(2 * w, 4 * w)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), conv(4 * w, 2 * w)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), conv(2 * w, w)
        self.seg = nn.Conv2d(w, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.e1(x)
        s2 = self.e2(nn.functional.max_pool2d(s1, 2))
        h = self.mid(nn.functional.max_pool2d(s2, 2))
        h = self.d2(torch.cat([self.u2(h), s2], 1))
        h = self.d1(torch.cat([self.u1(h), s1], 1))
        return self.seg(h).mean((2, 3))


class _LnGeluSeq(nn.Module):
    """Issue 16's failing case: (N, 16, 96) token features, a pre-LN GELU MLP block with a residual,
    a final LayerNorm, mean over tokens, 10 logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.mlp(self.ln1(x))
        return self.head(self.ln2(h).mean(1))


def _vit(quick: bool) -> nn.Module:
    import transformers
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32 if quick else 64,
                                 num_hidden_layers=1 if quick else 2, num_attention_heads=4,
                                 intermediate_size=64 if quick else 128, num_labels=10)
    return transformers.ViTForImageClassification(cfg)


def _bert(quick: bool) -> nn.Module:
    import transformers
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=32 if quick else 64, num_hidden_layers=1 if quick else 2,
                                  num_attention_heads=4, intermediate_size=64 if quick else 128,
                                  max_position_embeddings=64, num_labels=4)
    return transformers.BertForSequenceClassification(cfg)


def _images(g: torch.Generator, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(n, *shape, generator=g)


def _tokens(g: torch.Generator, n: int, t: int, vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=g)


def _bert_inputs(g: torch.Generator, n: int, t: int) -> dict[str, torch.Tensor]:
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)  # padded batches, as tokenizers make them
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return {"input_ids": _tokens(g, n, t) * mask, "attention_mask": mask}


@dataclass(frozen=True)
class Arch:
    """One zoo entry: `build(quick)` -> model, `inputs(generator, N, quick)` -> x, N (full, quick)."""

    name: str
    what: str
    build: Callable[[bool], nn.Module]
    inputs: Callable[[torch.Generator, int, bool], Any]
    n: int
    n_quick: int = 4


ZOO: tuple[Arch, ...] = (
    Arch("mlp-w64", "MLP 784-64-64-10, ReLU (1x28x28)", lambda q: _mlp(64, 2),
         lambda g, n, q: _images(g, n, (1, 28, 28)), 256),
    Arch("mlp-w512", "MLP 784-512-512-10, ReLU (1x28x28)", lambda q: _mlp(128 if q else 512, 2),
         lambda g, n, q: _images(g, n, (1, 28, 28)), 64),
    Arch("mlp-w2048", "MLP 784-2048-10, ReLU (1x28x28)", lambda q: _mlp(256 if q else 2048, 1),
         lambda g, n, q: _images(g, n, (1, 28, 28)), 32),
    Arch("lenet5", "LeNet-5, tanh, average pools (1x28x28)", lambda q: _lenet5(),
         lambda g, n, q: _images(g, n, (1, 28, 28)), 128),
    Arch("vgg-bn", "VGG-style, 5 conv-BN-ReLU, widths 16/32/64, max pools (3x32x32)", lambda q: _vgg_bn(8 if q else 16),
         lambda g, n, q: _images(g, n, (3, 32, 32)), 64),
    Arch("resnet-bn", "ResNet-style, 3 basic blocks with BN, widths 16/32/64 (3x32x32)",
         lambda q: _resnet_bn(8 if q else 16), lambda g, n, q: _images(g, n, (3, 32, 32)), 64),
    Arch("mobilenet", "depthwise-separable CNN, BN, widths 16/32/64 (3x32x32)", lambda q: _mobilenet(8 if q else 16),
         lambda g, n, q: _images(g, n, (3, 32, 32)), 64),
    Arch("wrn-10-2", "WRN-10-2 with BN, ntkit.models.build_model('wrn:10-2') (3x32x32)",
         lambda q: ntkit_models().build_model("wrn:10-1" if q else "wrn:10-2", (3, 32, 32), 10),
         lambda g, n, q: _images(g, n, (3, 32, 32)), 32),
    Arch("mixer", "MLP-Mixer, 4x4 patches (64 tokens), dim 64, 2 blocks, LN, GELU (3x32x32)",
         lambda q: _Mixer(32 if q else 64, 1 if q else 2), lambda g, n, q: _images(g, n, (3, 32, 32)), 64),
    Arch("vit", "transformers ViTForImageClassification, 8x8 patches, hidden 64, 2 layers (3x32x32)",
         _vit, lambda g, n, q: _images(g, n, (3, 32, 32)), 64),
    Arch("bert", "transformers BertForSequenceClassification, hidden 64, 2 layers, 32 tokens, "
         "dict inputs with a padding attention mask", _bert,
         lambda g, n, q: _bert_inputs(g, n, 8 if q else 32), 64),
    Arch("lstm", "embedding 1000x64, LSTM 64, last state -> 4 classes, 32 token ids",
         lambda q: _TextLSTM(1000, 16 if q else 64), lambda g, n, q: _tokens(g, n, 8 if q else 32), 64),
    Arch("unet", "U-Net, 2 levels, widths 16/32/64, skip concats, pooled 10-class map (1x28x28)",
         lambda q: _UNet(4 if q else 16), lambda g, n, q: _images(g, n, (1, 28, 28)), 32),
    Arch("ln-gelu-seq", "LayerNorm + GELU MLP block, residual, over 16 tokens of width 96, mean-pooled "
         "(issue 16's case)", lambda q: _LnGeluSeq(32 if q else 96),
         lambda g, n, q: _images(g, n, (16, 32 if q else 96)), 128),
)


def ntkit_models():  # imported lazily: only wrn needs it
    import ntkit.models
    return ntkit.models


def build(arch: Arch, quick: bool, seed: int, device: torch.device) -> tuple[nn.Module, Any]:
    """The model (eval, float32, weights from `seed` whatever else ran before) and its inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build(quick).to(device=device, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = arch.inputs(g, arch.n_quick if quick else arch.n, quick)
    x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
    return model, x


# ================================================================ timeouts and the memory guard
class CallTimeout(BaseException):
    """A call ran past --timeout (BaseException: no `except Exception` inside a method takes it
    for a failure to fall back from)."""


class MemoryGuard(BaseException):
    """The process went over --mem-guard GiB of RSS during a call."""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Guard:
    """Interrupts the call in progress (in the main thread, at its next Python bytecode) when it
    runs past `timeout` s (SIGALRM) or the process's RSS goes over `mem_bytes` (a watcher thread
    sends SIGUSR1). One C++ op is not interrupted; ntkit's methods work in blocks, so they are."""

    def __init__(self, timeout: float, mem_bytes: int) -> None:
        self.timeout, self.mem_bytes = timeout, mem_bytes
        self.peak = 0
        self._armed = threading.Event()
        self._inside = False
        self._main = threading.main_thread().ident
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR1, self._on_memory)
        threading.Thread(target=self._watch, daemon=True).start()

    def _on_alarm(self, *_: Any) -> None:
        if self._inside:  # a late signal after the call ended is dropped
            raise CallTimeout(f"over {self.timeout:g} s")

    def _on_memory(self, *_: Any) -> None:
        self._armed.clear()
        if self._inside:
            raise MemoryGuard(f"RSS over {self.mem_bytes / 2**30:.1f} GiB")

    def _watch(self) -> None:
        while True:
            time.sleep(0.02)
            if self._armed.is_set():
                rss = _rss_bytes()
                self.peak = max(self.peak, rss)
                if rss > self.mem_bytes and self._armed.is_set():
                    self._armed.clear()
                    signal.pthread_kill(self._main, signal.SIGUSR1)

    @contextlib.contextmanager
    def __call__(self):
        self._inside = True
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        self._armed.set()
        try:
            yield
        finally:
            self._inside = False
            self._armed.clear()
            signal.setitimer(signal.ITIMER_REAL, 0)


# ===================================================================================== timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tutorial_call(model: nn.Module, x: Any, output: str) -> Callable[[], torch.Tensor]:
    """The tutorial's `empirical_ntk_jacobian_contraction` with x1 passed twice (it has no
    symmetric mode). Its `fnet_single` unsqueezes one tensor; for dict inputs and models that
    return a ModelOutput the same function is written for a mapping and `.logits`."""
    jc, _, make_fnet_single = _tutorial()
    params = {k: v.detach() for k, v in model.named_parameters()}
    if isinstance(x, dict):
        def fnet_single(p: dict, xi: dict) -> torch.Tensor:
            out = torch.func.functional_call(model, p, (), {k: v.unsqueeze(0) for k, v in xi.items()})
            return getattr(out, "logits", out).squeeze(0)
    elif hasattr(model, "config"):  # transformers: ModelOutput
        def fnet_single(p: dict, xi: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, p, (xi.unsqueeze(0),)).logits.squeeze(0)
    else:
        fnet_single = make_fnet_single(model)
    compute = {"full": "full", "trace": "trace"}.get(output)
    if compute is None:  # logit:K: the tutorial has no such mode; contract the K-th row of J
        k = int(output.split(":")[1])
        inner = fnet_single
        def fnet_single(p, xi, inner=inner, k=k):
            return inner(p, xi)[k:k + 1]
        compute = "trace"
    return lambda: jc(fnet_single, params, x, x, compute)


def _rel(k: torch.Tensor, ref: torch.Tensor) -> float:
    if k.shape != ref.shape:
        return math.inf
    k, ref = k.double(), ref.double()
    return float((k - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _tutorial_bytes(n: int, o: int, p: int, tensors: int, full: bool) -> int:
    """J(x1) and J(x2), (N, O, P) float32 each, and the stack of one kernel per parameter tensor
    that the tutorial sums at the end."""
    return 4 * (2 * n * o * p + tensors * n * n * (o * o if full else 1))


class _Recorder:
    """Records the method each `KernelCall.run` receives, so a row shows what auto ran (if the
    engine still has that hook; otherwise the row relies on ntkit.plan)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        try:
            from ntkit.engine.call import KernelCall
        except ImportError:
            return
        original = KernelCall.run
        recorder = self

        def run(self, method, *a, **k):
            recorder.ran.append(method)
            return original(self, method, *a, **k)
        KernelCall.run = run


def warm_up(device: torch.device) -> None:
    """Thread pools, oneDNN primitives, lazily imported code: paid here, not by the first row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LayerNorm(144),
                            nn.GELU(), nn.Linear(144, 3)).to(device).eval()
        x = torch.randn(4, 3, 8, 8, device=device)
        for m in (*NTKIT_METHODS, "auto"):
            for output in ("full", "trace"):
                ntkit.ntk(net, x, method=m, output=output)
        _tutorial_call(net, x, "full")()


def measure(arch: Arch, output: str, args: argparse.Namespace, guard: Guard, recorder: _Recorder,
            device: torch.device) -> dict:
    model, x = build(arch, args.quick, args.seed, device)
    n = (next(iter(x.values())) if isinstance(x, dict) else x).shape[0]
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        y = model(**x) if isinstance(x, dict) else model(x)
    n_out = getattr(y, "logits", y).shape[-1]
    row: dict[str, Any] = {"model": arch.name, "what": arch.what, "output": output, "n": n, "n_params": n_params,
                           "n_logits": n_out, "methods": {}}
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    for m in (*NTKIT_METHODS, "auto"):
        calls[m] = (lambda m=m: ntkit.ntk(model, x, method=m, output=output))
    fresh: dict[str, nn.Module] = {}

    def cold(m: str) -> Callable[[], torch.Tensor]:
        return lambda: ntkit.ntk(fresh.pop("model"), x, method=m, output=output)
    calls["auto-warm"] = calls.pop("auto")
    calls["auto"] = cold("auto")
    est = _tutorial_bytes(n, n_out if output in ("full", "trace") else 1, n_params,
                          len(list(model.parameters())), output == "full")
    skip: dict[str, str] = {}
    if est > args.mem_guard * 2**30:
        skip["tutorial"] = f"skipped (needs ~{est / 2**30:.1f} GiB for two Jacobians > --mem-guard)"
    else:
        try:
            calls["tutorial"] = _tutorial_call(model, x, output)
        except Exception as e:  # noqa: BLE001
            skip["tutorial"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    order = [c for c in COLUMNS if c in calls and c not in skip]
    times: dict[str, list[float]] = {c: [] for c in order}
    kernels: dict[str, torch.Tensor] = {}
    notes: dict[str, list[str]] = {c: [] for c in order}
    status: dict[str, str] = dict(skip)

    def one(c: str, keep: bool) -> None:
        if c == "auto" or c.endswith("-cold"):
            fresh["model"] = copy.deepcopy(model)  # every structure-keyed cache misses on a new object
            with contextlib.suppress(Exception):
                ntkit.engine.cache.clear(fresh["model"])
        mark = len(recorder.ran)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _sync(device)
                with guard():
                    t0 = time.perf_counter()
                    k = calls[c]()
                    _sync(device)
                    dt = time.perf_counter() - t0
        except (CallTimeout, MemoryGuard) as e:
            status[c] = f"{'timeout' if isinstance(e, CallTimeout) else 'oom_guard'} ({e})"
            return
        except Exception as e:  # noqa: BLE001
            status[c] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return
        finally:
            fresh.pop("model", None)
        if keep:
            times[c].append(dt)
        else:
            row["methods"].setdefault(c, {})["warmup_s"] = dt
            notes[c] = sorted({str(w.message).splitlines()[0][:160] for w in caught})
        if c == "auto" and len(recorder.ran) > mark:
            row.setdefault("auto_ran", []).append(recorder.ran[-1])
        if c not in kernels:
            kernels[c] = k.detach().cpu()

    for c in order:  # warm-up: lazy initialisation, allocator growth, the warm auto's plan cache
        one(c, keep=False)
    # A method whose warm-up took longer than --long-call s is far from the fastest: timed once.
    long = {c for c in order if row["methods"].get(c, {}).get("warmup_s", 0.0) > args.long_call}
    for r in range(args.repeats):
        shift = r % len(order)
        for c in order[shift:] + order[:shift]:
            if c not in status and not (c in long and r > 0):
                one(c, keep=True)
    # First calls of the methods that came within COLD_WITHIN of the fastest, interleaved with
    # more first calls of auto (their times join auto's).
    warm = {c: statistics.median(times[c]) for c in NTKIT_METHODS if c in times and times[c] and c not in status}
    firsts = [f"{c}-cold" for c in warm if warm[c] <= COLD_WITHIN * min(warm.values())] if warm else []
    for c in firsts:
        calls[c] = cold(c[: -len("-cold")])
        times[c], notes[c] = [], []
    for r in range(args.repeats if firsts else 0):
        group = [*firsts, "auto"]
        for c in group[r % len(group):] + group[: r % len(group)]:
            if c not in status:
                one(c, keep=True)
    ref = kernels.get("jacobian", kernels.get("tutorial"))
    for c in (*COLUMNS, *COLD_COLUMNS):
        entry = row["methods"].setdefault(c, {})
        entry["status"] = status.get(c, "ok" if times.get(c) else "not_run")
        if times.get(c):
            entry["times_s"] = times[c]
            entry["median_s"] = statistics.median(times[c])
        if notes.get(c):
            entry["warnings"] = notes[c]
        if c in kernels and ref is not None:
            entry["rel_err_vs_jacobian"] = _rel(kernels[c], ref)
    try:
        p = ntkit.plan(model, x, output=output)
        row["auto_pick"] = p.method
        row["auto_estimates"] = dict(p.estimates)
        row["auto_explain"] = str(p)
    except Exception as e:  # noqa: BLE001
        row["auto_pick"] = row.get("auto_ran", ["?"])[-1]
        row["auto_explain"] = f"ntkit.plan failed: {type(e).__name__}: {e}"
    _summarize(row)
    return row


def _summarize(row: dict) -> None:
    """Fastest ntkit method among those that agree with jacobian; auto's regret on a first call
    (auto on a fresh model against the fastest method's first call, probes and analysis included
    on both sides), on repeated calls (warm against warm), and its first call against the fastest
    warm method (the strictest reading); auto / tutorial."""
    ms = row["methods"]

    def agrees(c: str) -> bool:
        return ms[c].get("rel_err_vs_jacobian", math.inf) <= AGREE_RTOL

    ok = {c: ms[c]["median_s"] for c in NTKIT_METHODS if "median_s" in ms[c] and agrees(c)}
    row["fastest"] = min(ok, key=ok.get) if ok else None
    best = ok[row["fastest"]] if ok else None
    # A method's first call can only be slower than its warm calls: a method without a timed first
    # call counts with its warm time (it was over COLD_WITHIN of the quickest warm-up).
    first = {c: ms[f"{c}-cold"].get("median_s", t) for c, t in ok.items()}
    first_best = min(first.values()) if first else None
    row["fastest_first"] = min(first, key=first.get) if first else None
    for key, c, ref in (("regret", "auto", first_best), ("regret_warm", "auto-warm", best),
                        ("regret_cold_vs_warm", "auto", best)):
        row[key] = ms[c]["median_s"] / ref if ref and "median_s" in ms[c] and agrees(c) else None
    # auto's repeated calls try each method the cost model put close to its choice once (on real
    # calls, engine.choice.record): the slowest repeated call is the price of that.
    warm = ms["auto-warm"].get("times_s")
    row["regret_trying"] = max(warm) / best if warm and best and agrees("auto-warm") else None
    # ... and its last two repeated calls, after the trying (with up to two close methods it is
    # done by the fourth repeat): what a loop of calls settles at.
    row["regret_settled"] = (statistics.median(warm[-2:]) / best if warm and len(warm) >= 4 and best
                             and agrees("auto-warm") else None)
    # The noise floor: the fastest method against itself, the median of its 1st, 3rd, 5th calls
    # over that of its 2nd, 4th: the regret that an `auto` always running the fastest method
    # would show from this machine's timing noise alone (first calls and repeated calls).
    def self_ratio(times: list[float] | None) -> float | None:
        return statistics.median(times[0::2]) / statistics.median(times[1::2]) if times and len(times) >= 2 else None
    row["noise_warm"] = self_ratio(ms[row["fastest"]].get("times_s")) if row["fastest"] else None
    ff = row["fastest_first"]
    row["noise_first"] = self_ratio(ms.get(f"{ff}-cold", {}).get("times_s")) if ff else None
    tut = ms["tutorial"].get("median_s")
    row["auto_vs_tutorial"] = ms["auto"]["median_s"] / tut if tut and "median_s" in ms["auto"] else None
    bad = [f"{c} {ms[c]['rel_err_vs_jacobian']:.1e}" for c in COLUMNS
           if "rel_err_vs_jacobian" in ms[c] and not agrees(c)]
    have = [c for c in COLUMNS if "rel_err_vs_jacobian" in ms[c]]
    row["agree"] = ("no: " + ", ".join(bad)) if bad else ("yes" if len(have) > 1 else "unchecked")


# ===================================================================================== report
def _cell(entry: dict) -> str:
    if "median_s" in entry:
        return f"{entry['median_s']:.4f}"
    return entry.get("status", "–").split(" (")[0].split(":")[0]


def _ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def summary(rows: list[dict]) -> str:
    def stat(key: str) -> str:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if not vals:
            return "n/a"
        worst = max(rows, key=lambda r: r.get(key) or -1)
        return (f"worst {max(vals):.2f} ({worst['model']} {worst['output']}), median {statistics.median(vals):.2f}, "
                f"{sum(v <= 1.10 for v in vals)}/{len(vals)} rows <= 1.10")
    failed = [f"{r['model']} {r['output']}" for r in rows if "median_s" not in r["methods"]["auto"]]
    wrong = [f"{r['model']} {r['output']}" for r in rows
             if r["methods"]["auto"].get("rel_err_vs_jacobian", 0.0) > AGREE_RTOL]
    return (f"auto regret, first call (auto on a fresh model, probes included, against the fastest method's "
            f"first call): {stat('regret')}. Repeated calls (plan cache kept): {stat('regret_warm')}; the "
            f"slowest repeated call (one that tries a close method): {stat('regret_trying')}; the last two "
            f"repeated calls (after the trying): {stat('regret_settled')}. "
            f"auto's first call against the fastest method's repeated calls: {stat('regret_cold_vs_warm')}. "
            f"auto / tutorial: {stat('auto_vs_tutorial')}. The noise floor (the fastest method against itself: "
            f"the median of its 1st, 3rd and 5th calls over that of its 2nd and 4th), first calls: "
            f"{stat('noise_first')}; repeated calls: {stat('noise_warm')}."
            + (f" auto not timed on: {', '.join(failed)}." if failed else "")
            + (f" auto DISAGREES with jacobian on: {', '.join(wrong)}." if wrong else ""))


def table(rows: list[dict], compact: bool = False) -> list[str]:
    """The markdown table (compact: the README's columns)."""
    if compact:
        head = ["model", "output", "N", "jacobian s", "ntk-vp s", "structured s", "tutorial jc s", "auto s → pick",
                "regret (first call)", "regret (repeated)", "auto / tutorial"]
    else:
        head = ["model", "output", "N", "P", "jacobian s", "ntk-vp s", "structured s", "auto s (cold)",
                "auto s (warm)", "tutorial jc s", "fastest first call s", "auto →", "fastest", "regret (first call)",
                "regret warm", "cold / fastest warm", "auto / tutorial", "agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = r["methods"]
        t = [_cell(ms[c]) for c in COLUMNS]
        if compact:
            cells = [r["model"], r["output"], str(r["n"]), t[0], t[1], t[2], t[5], f"{t[3]} → {r.get('auto_pick')}",
                     _ratio(r["regret"]), _ratio(r["regret_warm"]), _ratio(r["auto_vs_tutorial"])]
        else:
            ff = r.get("fastest_first")
            first = _cell(ms[f"{ff}-cold"]) if ff and "median_s" in ms.get(f"{ff}-cold", {}) else "–"
            cells = [r["model"], r["output"], str(r["n"]), f"{r['n_params']:,}", *t[:3], t[3], t[4], t[5], first,
                     str(r.get("auto_pick")), str(r.get("fastest")), _ratio(r["regret"]), _ratio(r["regret_warm"]),
                     _ratio(r.get("regret_cold_vs_warm")), _ratio(r["auto_vs_tutorial"]), r["agree"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def readme(path: Path) -> None:
    """Print the README's methods-section table from a results JSON."""
    data = json.loads(path.read_text())
    m = data["machine"]
    print(f"{m.get('cpu')}, {data['config']['threads']} torch threads, device {data['config']['device']}, "
          f"median of {data['config']['repeats']}; `{data['command']}`\n")
    print("\n".join(table(data["rows"], compact=True)))
    print(f"\n{summary(data['rows'])}")


def write(out: Path, result: dict) -> None:
    """auto_zoo.json and auto_zoo.md, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    md = [f"# auto_zoo ({result['date']})", "", f"`{result['command']}`", "",
          (f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{result['machine']['memory_gib']} GiB; torch {result['versions']['torch']}, "
          f"{result['config']['threads']} threads, device {result['config']['device']}; ntkit "
          f"{result['versions']['ntkit_source']}. Load average before {result['loadavg_before']}, "
          f"after {result['loadavg_after']}."), "",
          (f"Side by side in one process, round robin, median of {result['config']['repeats']} after a warm-up. "
          "auto (cold): a fresh copy of the model each call, deciding included; auto (warm): plan cache kept. "
          "regret (first call): auto cold / the fastest first call of an ntkit method that agrees with jacobian "
          "(rel. err <= 1e-3), each on a fresh copy of the model; regret warm: auto warm / the fastest warm method; "
          "cold / fastest warm: auto's first call / the fastest warm method. "
          "Repeated calls of auto try the methods the cost model put close to its choice (engine.choice.record), "
          "so their median includes those calls; 'the last two' is where they settle. "
          "tutorial jc: the torch.func tutorial's Jacobian contraction (x1 twice)."), "",
          summary(rows), "", *table(rows), ""]
    for name, text in (("auto_zoo.json", json.dumps(result, indent=1)), ("auto_zoo.md", "\n".join(md))):
        tmp = out / (name + ".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(out / name)
        finally:
            tmp.unlink(missing_ok=True)


def estimate(names: list[str], outputs: list[str], args: argparse.Namespace, device: torch.device) -> None:
    """Print how long the run would take, from ntkit.plan's cost estimates (matmul-peak FLOPs)
    over this machine's measured float32 matmul rate; times nothing else. A rough guide: the cost
    model is what this benchmark tests, and small calls are dominated by per-call overhead."""
    a = torch.randn(2048, 2048, device=device)
    rates = []
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        a @ a
        _sync(device)
        rates.append(2 * 2048**3 / (time.perf_counter() - t0))
    peak = max(rates)
    total = 0.0
    for name in names:
        arch = next(a for a in ZOO if a.name == name)
        model, x = build(arch, args.quick, args.seed, device)
        for output in outputs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = ntkit.plan(model, x, output=output).estimates
            sec = {m: min(est[m] / peak, args.timeout) for m in NTKIT_METHODS if m in est}
            # tutorial: both Jacobians, the whole square; auto: about its pick, twice (cold, warm)
            calls = [*sec.values(), min(sec.values()), min(sec.values()), min(2 * sec.get("jacobian", 0.0), args.timeout)]
            row = sum(t * (2 if t > args.long_call else 1 + args.repeats) for t in calls)
            total += row
            print(f"{name:12s} {output:8s} " + " ".join(f"{m} {t:.3f}s" for m, t in sec.items())
                  + f"  row ~{row:.0f} s")
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; estimated timed work {total / 60:.1f} min "
          f"(plus per-call overhead and planning; at least that long)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(a.name for a in ZOO), help="comma list (default: all)")
    ap.add_argument("--outputs", default="trace,full", help="comma list of ntkit outputs (trace, full, logit:0)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny N and widths: a smoke run of the script")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's; 1 with --quick, which checks the script, not speed)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:K]")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per call; a slower method is skipped")
    ap.add_argument("--long-call", type=float, default=10.0,
                    help="a method whose warm-up call took longer (s) is timed once, not --repeats times")
    ap.add_argument("--mem-guard", type=float, default=8.0, help="GiB of process RSS that interrupts a call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help=f"folder for auto_zoo.json and auto_zoo.md (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                         f"with --quick {QUICK_OUT.relative_to(HERE.parent)}, git-ignored)")
    ap.add_argument("--estimate", action="store_true", help="print the run's expected duration (ntkit.plan); time nothing")
    ap.add_argument("--readme", action="store_true", help="print the README table from OUT/auto_zoo.json; run nothing")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else QUICK_OUT if args.quick else DEFAULT_OUT
    if args.readme:
        readme(out / "auto_zoo.json")
        return
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    by_name = {a.name: a for a in ZOO}
    unknown = [s for s in names if s not in by_name]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    outputs = [s.strip() for s in args.outputs.split(",") if s.strip()]
    bad = [o for o in outputs if o not in ("full", "trace") and not o.startswith("logit:")]
    if bad:
        ap.error(f"unsupported output(s) {', '.join(bad)}; use full, trace or logit:K")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    if args.estimate:
        estimate(names, outputs, args, device)
        return
    load_before = os.getloadavg()
    guard = Guard(args.timeout, int(args.mem_guard * 2**30))
    recorder = _Recorder()
    warm_up(device)
    rows = []
    t_start = time.perf_counter()
    for name in names:
        for output in outputs:
            t0 = time.perf_counter()
            row = measure(by_name[name], output, args, guard, recorder, device)
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            ms = row["methods"]
            print(f"{name:12s} {output:8s} N={row['n']:<4d} " + " ".join(f"{c} {_cell(ms[c])}" for c in COLUMNS)
                  + "".join(f" {c} {_cell(ms[c])}" for c in COLD_COLUMNS if "median_s" in ms[c])
                  + f" | auto -> {row.get('auto_pick')} regret {_ratio(row['regret'])} "
                  f"warm {_ratio(row['regret_warm'])} "
                  f"vs tutorial {_ratio(row['auto_vs_tutorial'])} agree {row['agree']} ({row['wall_s']:.1f} s)",
                  flush=True)
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["auto_zoo.py", *argv]),
        "machine": _machine_info(),
        "versions": {"torch": torch.__version__, "ntkit_source": _ntkit_source()},
        "config": {"models": names, "outputs": outputs, "repeats": args.repeats, "quick": args.quick,
                   "threads": torch.get_num_threads(), "device": str(device), "timeout_s": args.timeout,
                   "mem_guard_gib": args.mem_guard, "long_call_s": args.long_call, "seed": args.seed},
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "wall_s": time.perf_counter() - t_start,
        "peak_rss_mb": guard.peak / 2**20,
        "summary": summary(rows),
        "rows": rows,
    }
    write(out, result)
    print("\n".join(table(rows)))
    print(summary(rows))
    print(f"wrote {out / 'auto_zoo.json'} and {out / 'auto_zoo.md'} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
