"""How fast is the ELM memory recurrence on a GPU: the fused Triton kernels against per-step loops.

    python3 bench/elm_speed.py [--quick] [--sweep] [--out bench/results/elm_speed.json]
    python3 bench/elm_speed.py --neuron-ratio-only   # re-read simulation_speed.json, update the ratio

Runs on a CUDA machine (one call of the GPU machine does everything). Measures:
1. Ceilings of the device, once: a large device-to-device copy (bytes read + written per
   second) and a large fp32 matrix product (tf32 off), for the floor arithmetic.
2. Training and inference throughput in simulated sample-milliseconds per second
   (batch * T / wall time) at T = 500, batch 8 / 32 / 256, for the recurrence alone and for
   whole models (ELM and Branch-ELM at d_m 20 and 100), comparing
     loop        the per-step PyTorch loop (surrogate.elm.memory_recurrence, implementation "reference")
     torchscript the same loop under torch.jit.script (as the published implementation)
     compile     the loop with its step torch.compile'd (skipped once compiling exceeds a cap)
     fused       the fused Triton kernels (surrogate/kernels/fused.py)
   forward+backward (training) and forward only (no_grad), with peak GPU memory.
3. How close the fused kernels come to the device's limits: counted FLOPs and bytes against the
   measured ceilings, and the time per recurrence step (the recurrence is sequential in T).
4. Inference against NEURON: simulated neuron-seconds per wall-second of whole 6000 ms
   simulations (Branch-ELM d_m 20, ELM d_m 100, batch as large as fits) over one NEURON
   simulation on one core (bench/results/simulation_speed.json, else the spec's ~1 min per 6 s).
--sweep also times the kernels' launch configurations (rows per program, warps, weight residency).
Writes bench/results/elm_speed.json; prints a table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.jsonio import write_json  # noqa: E402
from surrogate.elm import SCALED_TANH_GAIN, memory_recurrence  # noqa: E402

STEPS = 500
BATCHES = (8, 32, 256)
MEMORY_SIZES = (20, 100)
MODELS = ("branch-elm", "elm")
IMPLEMENTATIONS = ("loop", "torchscript", "compile", "fused")
TARGET = {"mode": "fwd+bwd", "batch": 32, "steps": 500, "d_m": 100}  # speedup_fused_vs_torchscript
SPEEDUP_TARGET = 30.0
INFERENCE_STEPS = 6000  # one whole NeuronIO simulation, 6 s at 1 ms
SPEC_NEURON_SECONDS_PER_CORE_SECOND = 6.0 / 60.0  # spec: ~1 min of one core per 6 s simulation
SPIKE_RATE = 0.01  # input spikes per synapse per ms for the model benchmarks (NeuronIO-like sparsity)


# --------------------------------------------------------------------------- implementations of the recurrence

@torch.jit.script
def _scripted_loop(drive: torch.Tensor, kappa_m: torch.Tensor, w_hm: torch.Tensor, w_zh: torch.Tensor,
                   b_z: torch.Tensor, lambda_value: float, silu: bool) -> torch.Tensor:
    memory = torch.zeros(drive.shape[0], w_zh.shape[0], dtype=drive.dtype, device=drive.device)
    gain = lambda_value * (1.0 - kappa_m) * 1.7159
    states: List[torch.Tensor] = []
    for t in range(drive.shape[1]):
        decayed = kappa_m * memory
        pre = drive[:, t] + torch.matmul(decayed, w_hm.t())
        hidden = F.silu(pre) if silu else F.relu(pre)
        z = torch.matmul(hidden, w_zh.t()) + b_z
        memory = decayed + gain * torch.tanh(2.0 / 3.0 * z)
        states.append(memory)
    return torch.stack(states, dim=1)


def torchscript_recurrence(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation="relu", **_):
    return _scripted_loop(drive, kappa_m, w_hm, w_zh, b_z, float(lambda_value), activation == "silu")


def _memory_step(drive_t, memory, kappa_m, w_hm, w_zh, b_z, gain, silu: bool):
    decayed = kappa_m * memory
    pre = drive_t + decayed @ w_hm.T
    hidden = F.silu(pre) if silu else F.relu(pre)
    return decayed + gain * torch.tanh(2.0 / 3.0 * (hidden @ w_zh.T + b_z))


class CompiledLoop:
    """The per-step loop with its step compiled by torch.compile; gives up once compiling takes too long."""

    def __init__(self, cap_seconds: float):
        import torch._dynamo
        for name in ("recompile_limit", "cache_size_limit"):  # one compiled step per shape and grad mode
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.step = torch.compile(_memory_step)
        self.cap_seconds, self.compile_seconds, self.given_up = cap_seconds, 0.0, False

    def __call__(self, drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation="relu", **_):
        memory = drive.new_zeros(drive.shape[0], w_zh.shape[0])
        gain = lambda_value * (1.0 - kappa_m) * SCALED_TANH_GAIN
        states = []
        for t in range(drive.shape[1]):
            memory = self.step(drive[:, t], memory, kappa_m, w_hm, w_zh, b_z, gain, activation == "silu")
            states.append(memory)
        return torch.stack(states, dim=1)


def reference_recurrence(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation="relu", **_):
    return memory_recurrence(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation, implementation="reference")


def fused_recurrence(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation="relu", **_):
    from surrogate.kernels.fused import memory_recurrence_fused
    return memory_recurrence_fused(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation)


# --------------------------------------------------------------------------- timing

def cuda_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` runs, timed with CUDA events after `warmup` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1000.0)
    return statistics.median(times)


def peak_memory(fn) -> tuple[float, float]:
    """(peak allocated MiB during fn, of which MiB beyond what was allocated before)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak / 2**20, (peak - before) / 2**20


def measure_ceilings(log) -> dict:
    """Device-to-device copy bandwidth and fp32 (no tf32) matrix-product rate, measured once."""
    n = 512 * 2**20  # 2 GiB of fp32
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    seconds = cuda_time(lambda: dst.copy_(src), repeats=20, warmup=3)
    copy_bytes_per_s = 2 * n * 4 / seconds  # read + write
    del src, dst
    size = 8192
    a, b = torch.randn(size, size, device="cuda"), torch.randn(size, size, device="cuda")
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    seconds = cuda_time(lambda: a @ b, repeats=10, warmup=2)
    torch.backends.cuda.matmul.allow_tf32 = allow
    fp32_flops = 2 * size**3 / seconds
    del a, b
    torch.cuda.empty_cache()
    log(f"ceilings: copy {copy_bytes_per_s / 1e12:.2f} TB/s (read+write), fp32 matmul {fp32_flops / 1e12:.1f} TFLOP/s")
    return {"copy_bytes_per_s": copy_bytes_per_s, "fp32_matmul_flop_per_s": fp32_flops}


# --------------------------------------------------------------------------- problems

def random_parameters(d_m: int, hidden: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    tau = torch.logspace(0, math.log10(150.0), d_m, device="cuda")
    kappa_m = torch.exp(-1.0 / tau)
    w_hm = (torch.rand(hidden, d_m, device="cuda", generator=g) * 2 - 1) / math.sqrt(d_m + 45)
    w_zh = (torch.rand(d_m, hidden, device="cuda", generator=g) * 2 - 1) / math.sqrt(hidden)
    b_z = (torch.rand(d_m, device="cuda", generator=g) * 2 - 1) / math.sqrt(hidden)
    return kappa_m, w_hm, w_zh, b_z


def recurrence_case(implementation, d_m: int, batch: int, steps: int, backward: bool):
    """fn() running the recurrence alone (drive like an ELM's) forward, or forward + backward."""
    hidden = 2 * d_m
    params = [p.requires_grad_(backward) for p in random_parameters(d_m, hidden)]
    drive = torch.randn(batch, steps, hidden, device="cuda", requires_grad=backward)
    grad_out = torch.randn(batch, steps, d_m, device="cuda")
    inputs = [drive, *params]

    def run():
        if backward:
            memory = implementation(*inputs, 5.0, "relu")
            torch.autograd.grad(memory, inputs, grad_out)
        else:
            with torch.no_grad():
                implementation(*inputs, 5.0, "relu")
    return run


def build_model(kind: str, d_m: int):
    from surrogate.elm import ELM, ELMConfig

    torch.manual_seed(0)
    branches = {"num_branch": 45, "num_synapse_per_branch": 100} if kind == "branch-elm" else {}
    return ELM(ELMConfig(num_memory=d_m, **branches)).cuda()


def random_spikes(batch: int, steps: int, chunk: int = 64) -> torch.Tensor:
    """(batch, steps, 1278) float 0/1, drawn in chunks of simulations (no full-size temporaries)."""
    x = torch.empty(batch, steps, 1278, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        x[start:stop] = torch.rand(stop - start, steps, 1278, device="cuda", generator=g) < SPIKE_RATE
    return x


def use_recurrence(implementation) -> None:
    """Point the ELM at one implementation of the recurrence, including the benchmark's own baselines
    (TorchScript, torch.compile), which ELM.forward's `recurrence` choices do not offer: ELM.forward calls
    surrogate.elm.memory_recurrence, replaced here for the benchmark process only."""
    import surrogate.elm
    surrogate.elm.memory_recurrence = implementation


def model_case(implementation, model, batch: int, steps: int, backward: bool, x=None):
    use_recurrence(implementation)
    x = random_spikes(batch, steps) if x is None else x

    def run():
        if backward:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        else:
            with torch.no_grad():
                model(x)
    return run


# --------------------------------------------------------------------------- FLOP and byte counts (fused kernels)

def fused_counts(d_m: int, batch: int, steps: int, backward: bool) -> dict:
    """Least FLOPs and device-memory bytes of the fused recurrence (fp32, each tensor touched once)."""
    hidden = 2 * d_m
    row_steps = batch * steps
    matvec_flops = 2 * 2 * d_m * hidden  # two matrix-vector products per row and step
    if not backward:  # inference forward: read drive, write m
        return {"flops": row_steps * matvec_flops, "bytes": row_steps * 4 * (hidden + d_m)}
    forward = {"flops": row_steps * matvec_flops, "bytes": row_steps * 4 * (hidden + d_m + hidden + d_m)}
    # backward kernel: read dL/dm, m, p, u; write dL/d drive, dz. Weight gradients: two GEMMs over B*T.
    backward_kernel = {"flops": row_steps * matvec_flops, "bytes": row_steps * 4 * (3 * d_m + hidden + hidden + d_m)}
    gemms = {"flops": 2 * 2 * row_steps * d_m * hidden, "bytes": row_steps * 4 * (hidden + d_m + d_m + hidden)}
    return {k: forward[k] + backward_kernel[k] + gemms[k] for k in forward}


# --------------------------------------------------------------------------- the runs

def run_rows(args, log) -> list[dict]:
    rows = []
    compiled = CompiledLoop(cap_seconds=args.compile_cap)
    implementations = {"loop": reference_recurrence, "torchscript": torchscript_recurrence,
                       "compile": compiled, "fused": fused_recurrence}
    batches = (32,) if args.quick else BATCHES
    memory_sizes = MEMORY_SIZES
    # the target configuration first, so that it is measured even if the compile cap is hit later
    plan = []
    for what in ("recurrence", *MODELS):
        for d_m in sorted(memory_sizes, reverse=True):
            for batch in sorted(batches, key=lambda b: (b != TARGET["batch"], b)):
                for mode in ("fwd+bwd", "fwd"):
                    plan.append((what, d_m, batch, mode))
    if args.quick:
        plan = [p for p in plan if p[3] == "fwd+bwd" or p[0] == "recurrence"]
    for what, d_m, batch, mode in plan:
        backward = mode == "fwd+bwd"
        model = build_model(what, d_m) if what != "recurrence" else None
        x = random_spikes(batch, args.steps) if model is not None else None
        for name in IMPLEMENTATIONS:
            if name == "compile" and compiled.given_up:
                rows.append({"what": what, "d_m": d_m, "batch": batch, "steps": args.steps, "mode": mode,
                             "implementation": name, "skipped": "compile time cap reached"})
                continue
            impl = implementations[name]
            fn = (model_case(impl, model, batch, args.steps, backward, x) if model is not None
                  else recurrence_case(impl, d_m, batch, args.steps, backward))
            started = time.perf_counter()
            try:
                fn()  # first call: compiles (Triton, TorchScript profiling runs, torch.compile)
                torch.cuda.synchronize()
            except Exception as err:  # noqa: BLE001  (report and go on: a baseline may not run here)
                rows.append({"what": what, "d_m": d_m, "batch": batch, "steps": args.steps, "mode": mode,
                             "implementation": name, "skipped": f"{type(err).__name__}: {str(err)[:200]}"})
                log(f"  {what} d_m {d_m} batch {batch} {mode} {name}: failed ({type(err).__name__})")
                continue
            first_call = time.perf_counter() - started
            if name == "compile":
                compiled.compile_seconds += first_call
                if compiled.compile_seconds > compiled.cap_seconds:
                    compiled.given_up = True
            repeats = 10 if name == "fused" else 3
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            seconds = cuda_time(fn, repeats=repeats, warmup=1 if name != "torchscript" else 2)
            peak_bytes = torch.cuda.max_memory_allocated()
            peak, extra = peak_bytes / 2**20, (peak_bytes - before) / 2**20
            row = {"what": what, "d_m": d_m, "batch": batch, "steps": args.steps, "mode": mode,
                   "implementation": name, "seconds": seconds,
                   "sample_ms_per_s": batch * args.steps / seconds,
                   "us_per_step": seconds / args.steps * 1e6,
                   "peak_memory_MiB": peak, "peak_memory_above_inputs_MiB": extra,
                   "first_call_s": first_call}
            rows.append(row)
            log(f"  {what:<10} d_m {d_m:>3} batch {batch:>3} {mode:<7} {name:<11} {seconds * 1e3:9.2f} ms "
                f"{row['sample_ms_per_s']:>12,.0f} sample-ms/s  peak {peak:8.0f} MiB  (first call {first_call:.1f} s)")
        del model, x
        torch.cuda.empty_cache()
    use_recurrence(fused_recurrence)
    return rows


def speedups(rows: list[dict]) -> dict:
    """fused / other throughput for every measured (what, d_m, batch, mode)."""
    table = {}
    by_key = {}
    for r in rows:
        if "seconds" in r:
            by_key.setdefault((r["what"], r["d_m"], r["batch"], r["mode"]), {})[r["implementation"]] = r["seconds"]
    for key, times in by_key.items():
        if "fused" in times:
            table["/".join(map(str, key))] = {f"vs_{name}": seconds / times["fused"]
                                              for name, seconds in times.items() if name != "fused"}
    return table


def limits(rows: list[dict], ceilings: dict) -> list[dict]:
    """Counted FLOPs and bytes of the fused rows against the measured ceilings."""
    out = []
    for r in rows:
        if r.get("implementation") != "fused" or r["what"] != "recurrence" or "seconds" not in r:
            continue
        counts = fused_counts(r["d_m"], r["batch"], r["steps"], r["mode"] == "fwd+bwd")
        flop_floor = counts["flops"] / ceilings["fp32_matmul_flop_per_s"]
        byte_floor = counts["bytes"] / ceilings["copy_bytes_per_s"]
        out.append({"d_m": r["d_m"], "batch": r["batch"], "mode": r["mode"], "seconds": r["seconds"],
                    "flops": counts["flops"], "bytes": counts["bytes"],
                    "achieved_flop_per_s": counts["flops"] / r["seconds"],
                    "achieved_bytes_per_s": counts["bytes"] / r["seconds"],
                    "floor_seconds": max(flop_floor, byte_floor),
                    "floor_bound": "flops" if flop_floor > byte_floor else "bytes",
                    "time_over_floor": r["seconds"] / max(flop_floor, byte_floor),
                    "us_per_step": r["us_per_step"]})
    return out


def inference_vs_neuron(args, log) -> dict:
    """Whole 6000 ms simulations through the full surrogate, batch as large as fits (fused, no_grad)."""
    use_recurrence(fused_recurrence)
    steps = args.inference_steps
    result = {}
    for kind, d_m in (("branch-elm", 20), ("elm", 100)):
        model = build_model(kind, d_m)
        for batch in args.inference_batches:
            x = None
            try:
                x = random_spikes(batch, steps)
                run = model_case(fused_recurrence, model, batch, steps, backward=False, x=x)
                run()
                seconds = cuda_time(run, repeats=3, warmup=0)
                peak, _ = peak_memory(run)
            except torch.cuda.OutOfMemoryError:
                log(f"  inference {kind} d_m {d_m}: batch {batch} does not fit")
                del x
                torch.cuda.empty_cache()
                continue
            neuron_seconds_per_s = batch * steps / 1000.0 / seconds
            result[f"{kind}_d_m_{d_m}"] = {"batch": batch, "steps": steps, "seconds": seconds,
                                           "neuron_seconds_per_wall_second": neuron_seconds_per_s,
                                           "peak_memory_MiB": peak}
            log(f"  inference {kind} d_m {d_m}: batch {batch} x {steps} ms in {seconds:.3f} s = "
                f"{neuron_seconds_per_s:,.0f} neuron-s per s")
            del x
            torch.cuda.empty_cache()
            break
        del model
        torch.cuda.empty_cache()
    return result


def neuron_ratio(inference: dict) -> dict:
    """Surrogate throughput over one NEURON simulation on one core, per NEURON setting."""
    path = PROJECT_ROOT / "bench" / "results" / "simulation_speed.json"
    neuron, source, default = {}, None, None
    if path.exists():
        data = json.loads(path.read_text())
        neuron = {k: float(v) for k, v in data.get("sim_seconds_per_core_second", {}).items()}
        default = data.get("recommended_default")
        source = str(path.relative_to(PROJECT_ROOT))
    if not neuron:
        neuron = {"spec_estimate": SPEC_NEURON_SECONDS_PER_CORE_SECOND}
        source = "spec figure: ~1 min of one core per 6 s simulation (simulation_speed.json absent)"
    ratios = {model: {setting: entry["neuron_seconds_per_wall_second"] / per_core
                      for setting, per_core in neuron.items()}
              for model, entry in inference.items()}
    # the two settings that matter: NeuronIO's (CVode) and the pipeline's default
    headline_settings = [k for k in ("cvode", default, "spec_estimate") if k in neuron]
    headline = {model: {("default " + k if k == default else k): r[k] for k in headline_settings}
                for model, r in ratios.items()}
    return {"neuron_sim_seconds_per_core_second": neuron, "source": source, "default_setting": default,
            "surrogate_over_one_core": ratios, "headline": headline}


# --------------------------------------------------------------------------- launch-configuration sweep

SWEEP = {  # (kernel module, d_m) -> launch configurations "rows per program, warps, chunk of H, unroll, stages, prefetch"
    ("fused", 20): ["1,1,64,1,1,0", "1,2,64,1,1,0", "1,4,64,1,1,0", "2,2,64,1,1,0", "2,4,64,1,1,0", "4,4,64,1,1,0",
                    "1,2,32,1,1,1", "1,4,32,1,1,1"],
    ("fused", 100): ["1,8,64,1,1,1", "1,8,64,1,1,0", "1,4,64,1,1,1", "1,8,128,1,1,1", "1,16,128,1,1,1",
                     "1,8,32,1,1,1", "1,16,64,1,1,1", "1,8,64,2,1,1", "1,8,64,4,1,1", "1,8,32,2,1,1",
                     "2,8,64,1,1,1", "2,16,64,1,1,1", "1,16,32,1,1,1", "1,4,32,1,1,1"],
}


def sweep_configs(args, log) -> list[dict]:
    """Time the fused kernels under each launch configuration (forward with saves, backward)."""
    import importlib

    import triton

    out = []
    for (module_name, d_m), configs in SWEEP.items():
        fused = importlib.import_module(f"surrogate.kernels.{module_name}")
        hidden = 2 * d_m
        for batch in (32, 256):
            kappa, w_hm, w_zh, b_z = random_parameters(d_m, hidden)
            drive = torch.randn(batch, args.steps, hidden, device="cuda")
            grad_memory = torch.randn(batch, args.steps, d_m, device="cuda")
            default = fused.launch_config(batch, d_m, hidden)
            ref_memory, pre, tanh_z = fused._forward(drive, kappa, w_hm, w_zh, b_z, 5.0, False, True)
            ref_grads = fused._backward(grad_memory, ref_memory, pre, tanh_z, kappa, w_hm, w_zh, 5.0, False)
            for spec in configs:
                config = fused.launch_config(batch, d_m, hidden, override=spec)
                try:
                    fwd = lambda: fused._forward(drive, kappa, w_hm, w_zh, b_z, 5.0, False, True, config)  # noqa: E731
                    memory, _, _ = fwd()
                    bwd = lambda: fused._backward(grad_memory, ref_memory, pre, tanh_z, kappa, w_hm, w_zh,  # noqa: E731
                                                  5.0, False, config)
                    grads = bwd()
                    error = max((memory - ref_memory).abs().max().item(),
                                *[(a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
                                  for a, b in zip(grads, ref_grads)])
                    t_fwd = triton.testing.do_bench(fwd, warmup=10, rep=60, return_mode="median") / 1e3
                    t_bwd = triton.testing.do_bench(bwd, warmup=10, rep=60, return_mode="median") / 1e3
                except Exception as err:  # noqa: BLE001
                    log(f"  sweep {module_name} d_m {d_m} batch {batch} {spec}: {type(err).__name__} {err}"[:300])
                    continue
                row = {"kernels": module_name, "d_m": d_m, "batch": batch, "config": spec,
                       "fwd_us_per_step": t_fwd / args.steps * 1e6, "bwd_us_per_step": t_bwd / args.steps * 1e6,
                       "max_difference_vs_default": error, "is_default": config == default}
                out.append(row)
                log(f"  sweep {module_name:<13} d_m {d_m:>3} batch {batch:>3} {spec:<15}: "
                    f"fwd {row['fwd_us_per_step']:6.2f} us/step  bwd {row['bwd_us_per_step']:6.2f} us/step  "
                    f"diff {error:.1e}{'  (default)' if row['is_default'] else ''}")
    return out


# --------------------------------------------------------------------------- report

def print_table(result: dict) -> None:
    rows = [r for r in result["rows"] if "seconds" in r]
    print("\nthroughput, simulated sample-ms per second (T = %d); speedup of fused over torchscript" % result["steps"])
    print(f"{'what':<11}{'d_m':>4}{'batch':>6} {'mode':<8}" + "".join(f"{n:>13}" for n in IMPLEMENTATIONS)
          + f"{'fused/ts':>10}{'fused MiB':>11}{'ts MiB':>9}")
    keys = sorted({(r["what"], r["d_m"], r["batch"], r["mode"]) for r in rows})
    for key in keys:
        cells = {r["implementation"]: r for r in rows if (r["what"], r["d_m"], r["batch"], r["mode"]) == key}
        line = f"{key[0]:<11}{key[1]:>4}{key[2]:>6} {key[3]:<8}"
        line += "".join(f"{cells[n]['sample_ms_per_s']:>13,.0f}" if n in cells else f"{'-':>13}" for n in IMPLEMENTATIONS)
        ratio = (cells["torchscript"]["seconds"] / cells["fused"]["seconds"]
                 if "fused" in cells and "torchscript" in cells else float("nan"))
        line += f"{ratio:>9.1f}x"
        line += f"{cells['fused']['peak_memory_MiB']:>11.0f}" if "fused" in cells else f"{'-':>11}"
        line += f"{cells['torchscript']['peak_memory_MiB']:>9.0f}" if "torchscript" in cells else f"{'-':>9}"
        print(line)
    if result.get("limits"):
        print("\nfused recurrence vs the device's limits (counted FLOPs/bytes over measured ceilings)")
        for r in result["limits"]:
            print(f"  d_m {r['d_m']:>3} batch {r['batch']:>3} {r['mode']:<7} {r['seconds'] * 1e3:8.3f} ms "
                  f"({r['us_per_step']:.2f} us/step): {r['achieved_flop_per_s'] / 1e9:8.1f} GFLOP/s, "
                  f"{r['achieved_bytes_per_s'] / 1e9:7.1f} GB/s; floor {r['floor_seconds'] * 1e6:7.1f} us "
                  f"({r['floor_bound']}), {r['time_over_floor']:.0f}x over")
    if result.get("inference"):
        print("\ninference on whole simulations (fused), neuron-seconds per wall-second, and over one NEURON core "
              f"({result.get('neuron_ratio', {}).get('source')})")
        ratio = result.get("neuron_ratio", {}).get("headline", {})
        for name, r in result["inference"].items():
            over = ", ".join(f"{k}: {v:,.0f}x" for k, v in ratio.get(name, {}).items())
            print(f"  {name:<18} batch {r['batch']:>5} x {r['steps']} ms: {r['neuron_seconds_per_wall_second']:>12,.0f}  ({over})")
    target = result.get("speedup_fused_vs_torchscript", {})
    if target:
        print("\nspeedup_fused_vs_torchscript (fwd+bwd, batch 32, T 500, d_m 100): "
              + ", ".join(f"{k}: {v:.1f}x" for k, v in target.items()) + f"  (target >= {SPEEDUP_TARGET:.0f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "elm_speed.json")
    parser.add_argument("--quick", action="store_true", help="batch 32 only, fewer rows")
    parser.add_argument("--sweep", action="store_true", help="also time the kernels' launch configurations")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--compile-cap", type=float, default=150.0, help="seconds of torch.compile before giving up")
    parser.add_argument("--inference-steps", type=int, default=INFERENCE_STEPS)
    parser.add_argument("--inference-batches", type=int, nargs="+", default=[4096, 2048, 1024, 512, 256])
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--neuron-ratio-only", action="store_true",
                        help="update the NEURON comparison of an existing result from simulation_speed.json (no GPU)")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    if args.neuron_ratio_only:
        result = json.loads(args.out.read_text())
        result["neuron_ratio"] = neuron_ratio(result.get("inference", {}))
        write_json(args.out, result)
        print_table(result)
        return 0
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 everywhere: the baselines as the kernel
    properties = torch.cuda.get_device_properties(0)
    result = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"name": properties.name, "multiprocessors": properties.multi_processor_count,
                   "memory_GiB": properties.total_memory / 2**30, "torch": torch.__version__,
                   "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "steps": args.steps,
        "units": {"sample_ms_per_s": "batch * T / wall seconds (simulated ms of one sample per second)",
                  "peak_memory_MiB": "torch.cuda.max_memory_allocated during one call"},
    }
    log(f"device: {properties.name}, torch {torch.__version__}, triton {triton.__version__}")
    result["ceilings"] = measure_ceilings(log)
    if args.sweep:
        result["sweep"] = sweep_configs(args, log)
    result["rows"] = run_rows(args, log)
    result["speedups"] = speedups(result["rows"])
    result["speedup_fused_vs_torchscript"] = {
        what: result["speedups"][key]["vs_torchscript"]
        for what in MODELS + ("recurrence",)
        for key in ["/".join(map(str, (what, TARGET["d_m"], TARGET["batch"], TARGET["mode"])))]
        if key in result["speedups"] and "vs_torchscript" in result["speedups"][key]}
    result["speedup_target"] = SPEEDUP_TARGET
    result["limits"] = limits(result["rows"], result["ceilings"])
    write_json(args.out, result)  # kept even if the inference part fails
    if not args.skip_inference:
        result["inference"] = inference_vs_neuron(args, log)
        result["neuron_ratio"] = neuron_ratio(result["inference"])
    write_json(args.out, result)
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
