"""Empirical-NTK methods side by side: ntkit vs the torch.func tutorial vs neural-tangents.

Every (workload, output, peer, method) runs in its own fresh subprocess, so its peak RSS is its
own; a call still running after ``--timeout`` seconds or a process over ``--mem-guard`` GiB of RSS
is killed and recorded as ``killed (timeout)`` / ``killed (oom_guard)``. Each finished run is
checked against a float64 reference (the torch.func tutorial's Jacobian contraction in float64 on
the same weights, blocked per parameter tensor to bound memory).

    python benchmarks/ntk_methods.py                       # everything (~15-20 min on 2 cores)
    python benchmarks/ntk_methods.py --workloads W2-CNN --outputs trace --peers torchfunc,nt

Writes ``--out`` (JSON: machine, command, every measurement) and the same markdown table, printed
and saved next to it as ``.md``. Conventions (see benchmarks/README.md): symmetric case, x2 = x1
(ntkit gets ``x2=None``, the tutorial gets x1 twice, neural-tangents ``x2=None``); ``trace`` is
the SUM over logits (neural-tangents' mean is multiplied by O); one warm-up call, then the median
of ``--repeats`` calls (one call if the warm-up took more than ``--long-call`` s); JAX compile
time excluded and reported apart.

The top level imports only the standard library and NumPy: the same file is the child process in
the project's environment (torch, ntkit) and in ``benchmarks/.venv-nt`` (JAX, neural-tangents).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workloads as W

NT_PYTHON = HERE / ".venv-nt" / "bin" / "python"
NOISY_LOAD = 0.25  # cores used by other processes during a run above which it is flagged
EVENT = "@@NTB "  # child -> parent protocol: one JSON object per line after this prefix

PEERS: dict[str, tuple[str, ...]] = {
    "ntkit": ("auto", "jacobian", "ntk-vp", "structured"),
    "torchfunc": ("jc", "ntkvp"),
    "nt": ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES", "AUTO"),
}
PEER_LABEL = {"ntkit": "ntkit", "torchfunc": "torch.func", "nt": "neural-tangents"}
X2_CONVENTION = {
    "ntkit": "ntkit.ntk(model, x1, None): x2=None, symmetry exploitable",
    "torchfunc": "tutorial functions called with (x1, x1): both Jacobians computed",
    "nt": "empirical_ntk_fn(...)(x1, None, params)",
}


# ============================================================================== child process
def _emit(**event) -> None:
    sys.stdout.write(EVENT + json.dumps(event) + "\n")
    sys.stdout.flush()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _time_calls(call, repeats: int, long_call_s: float):
    """One warm-up call, then the median of `repeats` calls (1 call if the warm-up was long).

    Emits call_start / call_end so that the parent can time out a single call.
    Returns (last result, warm-up seconds, list of timed seconds).
    """
    def one():
        _emit(event="call_start")
        t0 = time.perf_counter()
        out = call()
        dt = time.perf_counter() - t0
        _emit(event="call_end", seconds=dt)
        return out, dt

    out, warm = one()
    times: list[float] = []
    n = repeats if warm <= long_call_s else 1
    for _ in range(n):
        del out
        out, dt = one()
        times.append(dt)
        if dt > long_call_s:
            break
    return out, warm, times


def _rel_err(k: np.ndarray, ref: np.ndarray) -> float:
    if k.shape != ref.shape:
        raise ValueError(f"kernel shape {k.shape} != reference shape {ref.shape}")
    k = k.astype(np.float64)
    return float(np.max(np.abs(k - ref)) / np.max(np.abs(ref)))


def _torch_versions() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


# --- the torch.func tutorial, as written in "Neural Tangent Kernels" (torch.func docs) --------
def _tutorial():
    import torch
    from torch.func import functional_call, jacrev, jvp, vjp, vmap

    def empirical_ntk_jacobian_contraction(fnet_single, params, x1, x2, compute="full"):
        # Compute J(x1)
        jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
        jac1 = jac1.values()
        jac1 = [j.flatten(2) for j in jac1]

        # Compute J(x2)
        jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
        jac2 = jac2.values()
        jac2 = [j.flatten(2) for j in jac2]

        # Compute J(x1) @ J(x2).T
        einsum_expr = None
        if compute == "full":
            einsum_expr = "Naf,Mbf->NMab"
        elif compute == "trace":
            einsum_expr = "Naf,Maf->NM"
        elif compute == "diagonal":
            einsum_expr = "Naf,Maf->NMa"
        else:
            assert False

        result = torch.stack([torch.einsum(einsum_expr, j1, j2) for j1, j2 in zip(jac1, jac2)])
        result = result.sum(0)
        return result

    def empirical_ntk_ntk_vps(func, params, x1, x2, compute="full"):
        def get_ntk(x1, x2):
            def func_x1(params):
                return func(params, x1)

            def func_x2(params):
                return func(params, x2)

            output, vjp_fn = vjp(func_x1, params)

            def get_ntk_slice(vec):
                # This computes ``vec @ J(x2).T``
                # `vec` is some unit vector (a single slice of the Identity matrix)
                vjps = vjp_fn(vec)
                # This computes ``J(X1) @ vjps``
                _, jvps = jvp(func_x2, (params,), vjps)
                return jvps

            # Here's our identity matrix
            basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(
                output.numel(), -1)
            return vmap(get_ntk_slice)(basis)

        # ``get_ntk(x1, x2)`` computes the NTK for a single data point x1, x2
        # Since the x1, x2 inputs to ``empirical_ntk_ntk_vps`` are batched,
        # we actually wish to compute the NTK between every pair of data points
        # between {x1} and {x2}. That's what the ``vmaps`` here do.
        result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)

        if compute == "full":
            return result
        if compute == "trace":
            return torch.einsum("NMKK->NM", result)
        if compute == "diagonal":
            return torch.einsum("NMKK->NMK", result)

    def make_fnet_single(net):
        def fnet_single(params, x):
            return functional_call(net, params, (x.unsqueeze(0),)).squeeze(0)
        return fnet_single

    return empirical_ntk_jacobian_contraction, empirical_ntk_ntk_vps, make_fnet_single


def _child_torchfunc(spec, arrays):
    import torch

    jc, ntkvp, make_fnet_single = _tutorial()
    net = W.torch_model(spec["workload"], arrays)
    x = torch.from_numpy(arrays["x"])
    params = {k: v.detach() for k, v in net.named_parameters()}
    fnet_single = make_fnet_single(net)
    fn = jc if spec["method"] == "jc" else ntkvp
    out, warm, times = _time_calls(lambda: fn(fnet_single, params, x, x, spec["output"]),
                                   spec["repeats"], spec["long_call_s"])
    return out.detach().numpy(), warm, times, {}, _torch_versions()


def _ntkit_auto_choice(ntkit, net, x, output):
    """What ntkit's `auto` picks here: (method, estimates or None, source)."""
    plan = getattr(ntkit, "plan", None)
    if callable(plan):  # public: ntkit.plan(model, x1, x2, *, output) -> NtkPlan
        p = plan(net, x, None, output=output)
        est = getattr(p, "estimates", None)
        return str(getattr(p, "method", p)), (dict(est) if est else None), "ntkit.plan"
    try:
        from ntkit.engine.call import prepare

        call = prepare(net, x, None, output)
        return call.choose(), None, "ntkit.engine.call.KernelCall.choose"
    except Exception as e:  # noqa: BLE001 -- the private planner moved: record no choice
        return None, None, f"unavailable ({type(e).__name__})"


def _child_ntkit(spec, arrays):
    import torch

    import ntkit

    net = W.torch_model(spec["workload"], arrays)
    x = torch.from_numpy(arrays["x"])
    info = {}
    if spec["method"] == "auto":
        try:
            choice, est, source = _ntkit_auto_choice(ntkit, net, x, spec["output"])
            info.update(auto_choice=choice, auto_choice_source=source)
            if est:
                info["auto_estimates"] = est
        except Exception as e:  # noqa: BLE001 -- a failing probe must not fail the timing
            info["auto_choice_source"] = f"error: {type(e).__name__}: {e}"
    out, warm, times = _time_calls(
        lambda: ntkit.ntk(net, x, None, method=spec["method"], output=spec["output"]),
        spec["repeats"], spec["long_call_s"])
    versions = _torch_versions()
    versions["ntkit"] = getattr(ntkit, "__version__", "?")
    return out.detach().numpy(), warm, times, info, versions


def _child_nt(spec, arrays):
    import jax
    import neural_tangents as nt

    wid, output, method = spec["workload"], spec["output"], spec["method"]
    apply_fn, params, x = W.stax_model(wid, arrays)
    y_torch = np.load(spec["y_torch"])
    y = np.asarray(apply_fn(params, x))
    fwd = float(np.max(np.abs(y - y_torch)) / np.max(np.abs(y_torch)))
    info = {"forward_rel_diff_vs_torch": fwd}
    if not fwd < 1e-5:
        raise RuntimeError(f"stax and torch models disagree: forward rel. diff {fwd:.2e}")

    impl = nt.NtkImplementation[method]
    fn = nt.empirical_ntk_fn(apply_fn, trace_axes=() if output == "full" else (-1,),
                             vmap_axes=0, implementation=impl)
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # AUTO prints "impl=..., flops=..." per candidate
        compiled = jax.jit(fn).lower(x, None, params).compile()
    info["compile_s"] = time.perf_counter() - t0
    if impl == nt.NtkImplementation.AUTO:
        flops = {}
        for line in buf.getvalue().splitlines():
            if line.startswith("impl=") and ", flops=" in line:
                name, f = line[len("impl="):].split(", flops=")
                name = name.split(".")[-1]  # "NtkImplementation.X" or, on Python 3.11, "3"
                if name.isdigit():
                    name = nt.NtkImplementation(int(name)).name
                flops[name] = float(f)
        if flops:
            info["auto_flops"] = flops
            info["auto_choice"] = min(flops, key=flops.get)  # first minimum, as NT does
            killed = spec.get("killed_siblings", {}).get(info["auto_choice"])
            if killed:
                info["note"] = (f"AUTO chose {info['auto_choice']}, whose own run on this "
                                f"workload/output was {killed}")
                return None, None, None, info, {"jax": jax.__version__}
    out, warm, times = _time_calls(lambda: compiled(x, None, params).block_until_ready(),
                                   spec["repeats"], spec["long_call_s"])
    k = np.asarray(out)
    if output == "trace":
        k = k * W.O  # neural-tangents' trace_axes reports the mean over logits
    versions = {"jax": jax.__version__, "jaxlib": jax.lib.__version__,
                "neural_tangents": getattr(nt, "__version__", "?"), "numpy": np.__version__,
                "xla_threads": os.cpu_count()}
    return k, warm, times, info, versions


def _child_reference(spec, arrays):
    """float64 torch.func Jacobian contraction, one parameter tensor at a time.

    Same method as the tutorial's `empirical_ntk_jacobian_contraction` (per-sample Jacobians by
    vmap(jacrev), then J(x1) J(x1)ᵀ), blocked so that W1-FCN-w1024 fits in memory: the kernel
    is a sum over parameter tensors, and each tensor's Jacobian is built in sample chunks.
    """
    import torch
    from torch.func import functional_call, jacrev, vmap

    wid = spec["workload"]
    net32 = W.torch_model(wid, arrays)
    x32 = torch.from_numpy(arrays["x"])
    with torch.no_grad():
        np.save(spec["y_torch"], net32(x32).numpy())
    net = net32.double()
    x = x32.double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    n, o = x.shape[0], W.O
    full = spec["full"]
    k = torch.zeros((n * o, n * o) if full else (n, n), dtype=torch.float64)
    t0 = time.perf_counter()
    for name, p in params.items():
        def f(p_, xi, name=name):
            return functional_call(net, {**params, name: p_}, (xi.unsqueeze(0),)).squeeze(0)
        chunk = max(1, int(5e8 // (o * p.numel() * 8)))
        j = torch.cat([vmap(jacrev(f), (None, 0))(p, x[s:s + chunk]).reshape(-1, o, p.numel())
                       for s in range(0, n, chunk)])  # (N, O, P_tensor)
        if full:
            j = j.reshape(n * o, -1)
            k += j @ j.T
        else:
            k += torch.einsum("naf,maf->nm", j, j)
        del j
    k = k.reshape(n, o, n, o).permute(0, 2, 1, 3).contiguous() if full else k
    np.save(spec["ref_full" if full else "ref_trace"], k.numpy())
    if full:
        np.save(spec["ref_trace"], torch.einsum("nmaa->nm", k).numpy())
    return None, time.perf_counter() - t0, [], {}, _torch_versions()


def _child_matmul(spec, _arrays):
    """float32 matmul throughput: torch.mm, n x n, median of `repeats` calls after a warm-up."""
    import torch

    res = {}
    _emit(event="call_start")
    for n in spec["sizes"]:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        ts = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            torch.mm(a, b)
            ts.append(time.perf_counter() - t0)
        res[str(n)] = 2.0 * n**3 / statistics.median(ts) / 1e9
    _emit(event="call_end", seconds=0.0)
    return None, None, [], {"gflops": res}, _torch_versions()


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    arrays = W.load_arrays(spec["npz"]) if spec.get("npz") else {}
    try:
        fn = {"torchfunc": _child_torchfunc, "ntkit": _child_ntkit, "nt": _child_nt,
              "reference": _child_reference, "matmul": _child_matmul}[spec["peer"]]
        k, warm, times, info, versions = fn(spec, arrays)
        res = {"status": "ok", "warmup_s": warm, "times_s": times, "versions": versions, **info}
        if times:
            res["median_s"] = statistics.median(times)
        if k is None and spec["peer"] == "nt":
            res["status"] = "not_timed"
        if k is not None:
            res["rel_err"] = _rel_err(k, np.load(spec["ref"]))
    except Exception as e:  # noqa: BLE001 -- any failure becomes an "error" row
        msg = f"{type(e).__name__}: {e}"
        oom = "can't allocate memory" in msg or "out of memory" in msg.lower()
        res = {"status": "killed (oom_guard)" if oom else "error", "note": msg[:500]}
    res["peak_rss_mb"] = _peak_rss_mb()
    _emit(event="result", **res)


# ============================================================================= parent process
def _read_proc_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


_HZ = os.sysconf("SC_CLK_TCK")


def _system_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / _HZ  # minus idle and iowait


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of process `pid` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _HZ
    except (OSError, IndexError, ValueError):
        return None


def wait_for_idle(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait_s`) until other processes use < `threshold` cores over 1 s.

    Returns the load (cores) of the last 1 s window.
    """
    t_end = time.monotonic() + max_wait_s
    while True:
        b0, t0 = _system_busy_s(), time.monotonic()
        time.sleep(1.0)
        load = (_system_busy_s() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= t_end:
            return load


def run_child(python: str, spec: dict, *, timeout: float, setup_timeout: float, mem_guard_gb: float,
              workdir: Path, env_extra: dict | None = None) -> dict:
    """Run one measurement in a fresh process under the call timeout and the RSS guard."""
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
           "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    err_path = workdir / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                start_new_session=True)
    events: list[dict] = []
    state = {"call_t0": None}
    marks: list[tuple[float, float, float | None]] = []  # (time, system busy s, child cpu s)

    def reader():
        for line in proc.stdout:
            if line.startswith(EVENT):
                ev = json.loads(line[len(EVENT):])
                if ev["event"] in ("call_start", "call_end"):
                    marks.append((time.monotonic(), _system_busy_s(), _proc_cpu_s(proc.pid)))
                if ev["event"] == "call_start":
                    state["call_t0"] = time.monotonic()
                elif ev["event"] == "call_end":
                    state["call_t0"] = None
                events.append(ev)

    def others_load() -> float | None:
        """Cores used by OTHER processes from the first call's start to the last mark."""
        if len(marks) < 2 or marks[0][2] is None or marks[-1][2] is None:
            return None
        (t0, b0, c0), (t1, b1, c1) = marks[0], marks[-1]
        return max(0.0, ((b1 - b0) - (c1 - c0)) / (t1 - t0)) if t1 > t0 else None

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t_start = time.monotonic()
    guard_kb = mem_guard_gb * 1024**2
    hwm_kb = 0
    killed = None
    while proc.poll() is None:
        rss = _read_proc_kb(proc.pid, "VmRSS") or 0
        hwm_kb = max(hwm_kb, _read_proc_kb(proc.pid, "VmHWM") or 0, rss)
        now = time.monotonic()
        t0 = state["call_t0"]
        if rss > guard_kb:
            killed = "killed (oom_guard)"
        elif t0 is not None and now - t0 > timeout or t0 is None and now - t_start > setup_timeout + timeout * 8:
            killed = "killed (timeout)"
        if killed:
            marks.append((time.monotonic(), _system_busy_s(), _proc_cpu_s(proc.pid)))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    th.join(timeout=5)
    result = next((e for e in events if e["event"] == "result"), None)
    if killed:
        note = "in a call" if state["call_t0"] is not None else "before the first call"
        done = [e["seconds"] for e in events if e["event"] == "call_end"]
        return {"status": killed, "peak_rss_mb": hwm_kb / 1024.0, "others_load": others_load(),
                "note": f"{note}; finished calls: {[round(d, 3) for d in done]}"}
    if result is None:
        tail = err_path.read_text()[-1500:]
        sig = -proc.returncode if proc.returncode and proc.returncode < 0 else None
        status = "killed (oom_guard)" if sig == signal.SIGKILL else "error"
        return {"status": status, "peak_rss_mb": hwm_kb / 1024.0 or None,
                "note": f"exit code {proc.returncode}; stderr: {tail}"}
    result.pop("event")
    result["others_load"] = others_load()
    result["peak_rss_mb"] = max(result.get("peak_rss_mb") or 0, hwm_kb / 1024.0)
    return result


def _ntkit_methods() -> tuple[list[str] | None, str]:
    """ntkit.METHODS if `ntkit.ntk` exists, else (None, why)."""
    code = "import json, ntkit; ntkit.ntk; print(json.dumps(list(ntkit.METHODS)))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"ntkit.ntk is not available yet ({last})"
    return json.loads(p.stdout.strip().splitlines()[-1]), ""


def _ntkit_source() -> str:
    """The checkout's commit, with "+dirty" when src/ has uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", "-C", str(HERE.parent), *a], capture_output=True,
                              text=True, check=False).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    return head + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def _machine_info() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gb, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "hostname": platform.node()}


def _fmt_time(r: dict) -> str:
    st = r["status"]
    if st == "ok":
        return f"{r['median_s']:.4f}"
    return st + (f": {r['note']}" if st in ("skipped", "not_run", "not_timed") and r.get("note")
                 else "")


def _method_label(r: dict) -> str:
    m = r["method"]
    if r.get("auto_choice"):
        m += f" → {r['auto_choice']}"
    return m


def markdown_table(results: list[dict], peak_gflops: float | None) -> str:
    head = ("| workload | output | peer | method | median s | peak RSS MB | rel err "
            "| speed-up vs torch.func best | JC-equiv. GFLOP/s (% of mm peak) | others' load |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""
        err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else ""
        sp = f"{r['speedup_vs_torchfunc_best']:.2f}×" if r.get("speedup_vs_torchfunc_best") else ""
        gf = ""
        if r.get("jc_equiv_gflops"):
            gf = f"{r['jc_equiv_gflops']:.1f}"
            if peak_gflops:
                gf += f" ({100 * r['jc_equiv_gflops'] / peak_gflops:.0f}%)"
        ol = r.get("others_load")
        ol = "" if ol is None else f"{ol:.2f}" + (" ⚠" if ol > NOISY_LOAD else "")
        lines.append(f"| {r['workload']} | {r['output']} | {PEER_LABEL.get(r['peer'], r['peer'])} "
                     f"| {_method_label(r)} | {_fmt_time(r)} | {rss} | {err} | {sp} | {gf} "
                     f"| {ol} |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """The report as markdown: header, machine, the table, notes."""
    peak = (report.get("matmul_gflops") or {}).get("peak")
    table = markdown_table(report["results"], peak)
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(report["versions"].items()))
    peak_txt = f"{peak:.0f} GFLOP/s" if peak else "not measured"
    md = [f"# ntk_methods ({report['date']})", "", f"`{report['command']}`", "",
          (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; float32 torch.mm "
           f"peak {peak_txt}; versions: {versions}."), ""]
    for u in report.get("updates", []):
        md.append(f"Rows re-measured on {u['date']} by `{u['command']}`.  ")
    md += ["", table, ""]
    notes = report.get("notes", [])
    md += [f"- {n}" for n in notes]
    md += [
        ("- median s: median of timed calls after one warm-up (JAX compile excluded); "
         "trace = sum over logits; x2 = x1 (ntkit and neural-tangents get x2=None, "
         "the torch.func tutorial gets x1 twice)."),
        ("- JC-equiv. GFLOP/s: the Jacobian-contraction FLOPs of the workload "
         "(full 2(NO)²P, trace 2N²OP) divided by the time, whatever the method."),
        ("- others' load: cores used by other processes during the timed calls (from "
         f"/proc/stat); ⚠ above {NOISY_LOAD}: that row's time is inflated by a busy machine."),
    ]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(W.WORKLOADS))
    ap.add_argument("--outputs", default="full,trace")
    ap.add_argument("--peers", default="ntkit,torchfunc,nt")
    ap.add_argument("--methods", default="", help="optional filter, e.g. jc,STRUCTURED_DERIVATIVES")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per NTK call")
    ap.add_argument("--setup-timeout", type=float, default=300.0,
                    help="seconds for imports, model building and JAX compilation")
    ap.add_argument("--mem-guard", type=float, default=20.0, help="GiB of RSS per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-call", type=float, default=10.0,
                    help="a warm-up longer than this many seconds leaves one timed call")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each measurement, wait up to this many seconds for other "
                         "processes to use < 0.25 cores (shared machines)")
    ap.add_argument("--retry-noisy", type=int, default=1,
                    help="re-run a measurement up to this many times when other processes used "
                         f"more than {NOISY_LOAD} cores during it (keeps the quietest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="keep weights and float64 references here and reuse them (default: temp)")
    ap.add_argument("--out", default=str(HERE / "results" / "ntk_methods.json"))
    ap.add_argument("--update", action="store_true",
                    help="merge into an existing --out: the rows measured now replace the rows "
                         "with the same workload/output/peer/method, the others are kept")
    args = ap.parse_args(argv)

    wids = [w for w in args.workloads.split(",") if w]
    outputs = [o for o in args.outputs.split(",") if o]
    peers = [p for p in args.peers.split(",") if p]
    method_filter = {m for m in args.methods.split(",") if m}
    for w in wids:
        if w not in W.WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(W.WORKLOADS)}")
    for o in outputs:
        if o not in ("full", "trace"):
            ap.error(f"unknown output {o!r}; known: full, trace")
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}; known: {', '.join(PEERS)}")

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="ntk_methods_"))
    workdir = Path(args.workdir) if args.workdir else tmp_root
    workdir.mkdir(parents=True, exist_ok=True)
    run_kw = {"timeout": args.timeout, "setup_timeout": args.setup_timeout,
              "mem_guard_gb": args.mem_guard, "workdir": tmp_root}

    # cached weights/references are only valid for this version of the workload definitions
    src_hash = hashlib.sha1((HERE / "workloads.py").read_bytes()).hexdigest()[:8]
    notes: list[str] = []
    ntkit_methods, why = _ntkit_methods() if "ntkit" in peers else ([], "")
    if "ntkit" in peers and ntkit_methods is None:
        notes.append(f"ntkit rows skipped: {why}")
    nt_ok = NT_PYTHON.exists()
    if "nt" in peers and not nt_ok:
        notes.append(f"neural-tangents rows skipped: {NT_PYTHON} is missing; "
                     "run `bash benchmarks/setup_nt_venv.sh` first")

    report = {
        "benchmark": "ntk_methods",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": _machine_info(),
        "config": {"workloads": wids, "outputs": outputs, "peers": peers,
                   "timeout_s": args.timeout, "setup_timeout_s": args.setup_timeout,
                   "mem_guard_gib": args.mem_guard, "repeats": args.repeats,
                   "long_call_s": args.long_call, "seed": args.seed, "O": W.O,
                   "wait_idle_s": args.wait_idle, "retry_noisy": args.retry_noisy,
                   "x2_convention": X2_CONVENTION,
                   "trace": "sum over logits (neural-tangents' mean multiplied by O)",
                   "rel_err": "max|K - K_ref| / max|K_ref|, K_ref = float64 torch.func "
                              "Jacobian contraction on the same weights and inputs"},
        "versions": {"ntkit_source": _ntkit_source()},
        "notes": notes,
        "workloads": {},
        "results": [],
    }

    if args.update and out_path.exists():
        base = json.loads(out_path.read_text())
        base.setdefault("updates", []).append(
            {k: report[k] for k in ("date", "command", "config", "versions", "notes")})
        base["versions"].update(report["versions"])
        base["notes"] = base.get("notes", []) + notes
        report, notes = base, base["notes"]

    def put(row: dict) -> None:
        key = [row[k] for k in ("workload", "output", "peer", "method")]
        for i, r in enumerate(report["results"]):
            if [r[k] for k in ("workload", "output", "peer", "method")] == key:
                report["results"][i] = row
                return
        report["results"].append(row)

    def save():
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out_path)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        # -- machine float32 matmul peak
        peak = (report.get("matmul_gflops") or {}).get("peak") if args.update else None
        if not peak:
            log("measuring float32 matmul throughput (torch.mm) ...")
            if args.wait_idle:
                wait_for_idle(args.wait_idle)
            mm = run_child(sys.executable, {"peer": "matmul", "sizes": [2048, 4096],
                                            "repeats": 7}, **{**run_kw, "timeout": 600})
            peak = max(mm["gflops"].values()) if mm.get("gflops") else None
            report["matmul_gflops"] = {"torch.mm float32": mm.get("gflops"), "peak": peak,
                                       "others_load": mm.get("others_load")}
            report["versions"].update(mm.get("versions", {}))

        for wid in wids:
            wl = W.WORKLOADS[wid]
            wdir = workdir / f"{wid}-seed{args.seed}-{src_hash}"
            wdir.mkdir(exist_ok=True)
            files = {"npz": str(wdir / "arrays.npz"), "y_torch": str(wdir / "y_torch.npy"),
                     "ref_full": str(wdir / "ref_full.npy"),
                     "ref_trace": str(wdir / "ref_trace.npy")}
            if not Path(files["npz"]).exists():
                W.save_arrays(files["npz"], wid, args.seed)
            info = {"description": wl.description, "N": wl.n, "O": W.O,
                    "P": W.num_params(wid), "input_shape": list(wl.input_shape),
                    "jc_flops": {o: W.jc_flops(wid, o) for o in ("full", "trace")}}
            info = {**report["workloads"].get(wid, {}), **info}
            report["workloads"][wid] = info
            need_full = "full" in outputs
            have = Path(files["ref_full"] if need_full else files["ref_trace"]).exists()
            if not (have and Path(files["y_torch"]).exists()):
                log(f"[{wid}] float64 reference ({'full' if need_full else 'trace'}) ...")
                ref = run_child(sys.executable, {"peer": "reference", "workload": wid,
                                                 "full": need_full, **files},
                                **{**run_kw, "timeout": 3600, "mem_guard_gb": 22.0})
                if ref["status"] != "ok":
                    notes.append(f"{wid}: float64 reference failed ({ref['status']}: "
                                 f"{ref.get('note', '')[:300]}); workload skipped")
                    log(notes[-1])
                    continue
                info["reference_s"] = ref["warmup_s"]
                info["reference_peak_rss_mb"] = ref["peak_rss_mb"]
            info["reference"] = "float64 torch.func Jacobian contraction (per parameter tensor)"

            status_of: dict[tuple[str, str], dict] = {  # (workload/output, method) -> row
                (f"{wid}/{r['output']}", r["method"]): r
                for r in report["results"] if r["workload"] == wid}
            for output in outputs:
                for peer in peers:
                    for method in PEERS[peer]:
                        if method_filter and method not in method_filter:
                            continue
                        row = {"workload": wid, "output": output, "peer": peer, "method": method,
                               "x2": X2_CONVENTION[peer]}
                        skip = None
                        if peer == "ntkit" and ntkit_methods is None:
                            skip = why
                        elif peer == "ntkit" and method not in ntkit_methods:
                            skip = f"ntkit.METHODS has no {method!r} yet"
                        elif peer == "nt" and not nt_ok:
                            skip = "benchmarks/.venv-nt missing: run benchmarks/setup_nt_venv.sh"
                        if skip:
                            row.update(status="skipped", note=skip)
                        elif (peer == "torchfunc" and output == "trace"
                              and (full := status_of.get((wid + "/full", method)))
                              and full["status"].startswith("killed")
                              and (method == "ntkvp" or "oom" in full["status"])):
                            # the tutorial's ntkvp trace is einsum of the full kernel; its jc
                            # trace materialises the same Jacobians as the full one
                            row.update(status="not_run",
                                       note=f"implied by the full run ({full['status']})")
                        else:
                            spec = {"peer": peer, "workload": wid, "output": output,
                                    "method": method, "repeats": args.repeats,
                                    "long_call_s": args.long_call, "npz": files["npz"],
                                    "y_torch": files["y_torch"],
                                    "ref": files["ref_full" if output == "full" else "ref_trace"]}
                            if peer == "nt" and method == "AUTO":
                                spec["killed_siblings"] = {
                                    m: s["status"] for (k, m), s in status_of.items()
                                    if k == wid + "/" + output and s["status"].startswith("killed")}
                            python = str(NT_PYTHON) if peer == "nt" else sys.executable
                            res = None
                            for attempt in range(1 + args.retry_noisy):
                                if args.wait_idle:
                                    row["others_load_before"] = wait_for_idle(args.wait_idle)
                                t0 = time.monotonic()
                                new = run_child(python, spec, **run_kw)
                                new["wall_s"] = time.monotonic() - t0
                                new["attempts"] = attempt + 1
                                if res is None or (new.get("others_load") or 0) < (
                                        res.get("others_load") or 0):
                                    res = new
                                if (res.get("others_load") or 0) <= NOISY_LOAD:
                                    break
                                if attempt < args.retry_noisy:
                                    log(f"  ... others used {new['others_load']:.2f} cores, again")
                            report["versions"].update(res.pop("versions", {}))
                            if peer == "ntkit":
                                res["ntkit_source"] = report["versions"]["ntkit_source"]
                            row.update(res)
                        if row.get("status") == "ok":
                            row["jc_equiv_gflops"] = W.jc_flops(wid, output) / row["median_s"] / 1e9
                            if peak:
                                row["fraction_of_mm_peak"] = row["jc_equiv_gflops"] / peak
                        status_of[(f"{wid}/{output}", method)] = row
                        put(row)
                        log(f"[{wid} {output}] {PEER_LABEL[peer]:>15} {_method_label(row):<40} "
                            f"{_fmt_time(row):>12}  rss {row.get('peak_rss_mb') or 0:7.0f} MB  "
                            f"err {row.get('rel_err', float('nan')):.1e}  "
                            f"others {row.get('others_load') or 0:.2f}")
                        save()
                # speed-ups vs the best finished torch.func method of this workload/output
                rows = [r for r in report["results"]
                        if r["workload"] == wid and r["output"] == output]
                tf = [r["median_s"] for r in rows if r["peer"] == "torchfunc" and r["status"] == "ok"]
                for r in rows:
                    if tf and r["status"] == "ok":
                        r["speedup_vs_torchfunc_best"] = min(tf) / r["median_s"]
                save()
    except KeyboardInterrupt:
        notes.append("interrupted")
    finally:
        save()
        shutil.rmtree(tmp_root, ignore_errors=True)

    table = markdown_table(report["results"], (report.get("matmul_gflops") or {}).get("peak"))
    out_path.with_suffix(".md").write_text(render_markdown(report))
    print(table)
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
