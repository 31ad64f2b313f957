"""The ELM memory recurrence as fused Triton kernels (forward and backward).

The same steps as surrogate.elm.memory_dynamics (Spieler et al. ICLR 2024, ELM v1):
    a_t = kappa * m_{t-1}                       (decayed memory)
    p_t = drive_t + W_hm a_t                    (MLP pre-activation, H)
    h_t = act(p_t)
    z_t = W_zh h_t + b_z                        (d_m)
    u_t = tanh(2/3 z_t)
    m_t = a_t + G * u_t,   G = lambda * 1.7159 * (1 - kappa)

Why a kernel: the recurrence is sequential in time and tiny per step (two matrix-vector
products of d_m x H), so a per-step PyTorch loop is bound by kernel launches (~10 per step
forward, ~25 backward). Here one program owns a block of batch rows and walks the whole time
axis, with the weights held on chip and the memory state in registers; only drive_t goes in
and m_t comes out per step.

Layout: both weight matrices are held as (d_m, H) tiles, W1[d, h] = w_hm[h, d] and
W2[d, h] = w_zh[d, h], h along the lanes of a warp and d across warps (d_m and H are
compile-time constants, so the tiles are read with exact strides as 16-byte vectors; padding
to powers of two is masked). A step walks H in chunks: for each chunk, p = drive + W_hm a is a
reduction of W1 over d, act(p) is multiplied into W2 and accumulated elementwise, and one
reduction over h at the end of the step gives z, laid out like a, so the state never changes
layout. The products are fp32 FMAs on the CUDA cores: tensor cores would need >= 16 rows per
program and tf32 operands, which miss the fp32 tolerance. Small models (d_m ~20) keep both tiles
in registers for the whole run (one chunk); at d_m ~100 the two padded tiles (2 x 128 x 256
fp32 = 256 KB) are the size of a register file, so each step re-reads them (160 KB unpadded)
from L1 in chunks of hidden units, touching the next step's drive row early so it hits L1 too.

Backward (reverse time) runs the adjoint recurrence with the same two products:
    gm_t = dL/dm_t + kappa * ga_{t+1}
    gz_t = G gm_t * 2/3 (1 - u_t^2)
    gp_t = act'(p_t) * (W_zh^T gz_t)             (= dL/d drive_t)
    ga_t = gm_t + W_hm^T gp_t
and writes gp_t and gz_t for all t; the weight gradients are then sums over (batch, time) of
outer products, i.e. two large fp32 matrix products done by cuBLAS outside the kernel:
    dW_hm = sum gp_t a_t^T,  dW_zh = sum gz_t h_t^T,  db_z = sum gz_t,
    dkappa = sum ga_t * m_{t-1} - lambda * 1.7159 * sum gm_t * u_t   (accumulated in-kernel per row).
The forward saves p_t and u_t (only when a gradient is needed) so backward recomputes nothing
inside its sequential loop.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from surrogate.elm import SCALED_TANH_GAIN, activation_fn

_ACTIVATIONS = {"relu": 0, "silu": 1}
# Triton's CPU interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors (tests)
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _tanh(x):
    # tanh from one exp, odd-symmetric; absolute error ~1e-7 (libdevice's tanh is not
    # available in Triton's CPU interpreter, which the tests use to check this code path)
    e = tl.exp(-2.0 * tl.abs(x))
    magnitude = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def _activation(p, SILU: tl.constexpr):
    if SILU:
        return p / (1.0 + tl.exp(-p))
    else:
        return tl.maximum(p, 0.0)


@triton.jit
def _activation_slope(p, SILU: tl.constexpr):
    if SILU:
        s = 1.0 / (1.0 + tl.exp(-p))
        return s * (1.0 + p * (1.0 - s))
    else:
        return tl.where(p > 0, 1.0, 0.0)


@triton.jit
def _weight_chunk(w_ptr, c, d, h, CHUNK_H: tl.constexpr, D_M: tl.constexpr, HIDDEN: tl.constexpr):
    """Columns c*CHUNK_H.. of a (d_m, H) row-major matrix as a (1, BLOCK_D, CHUNK_H) tile, zeros outside.

    The sizes are constexpr, so these are 16-byte vector loads along h (when H is a multiple of
    4), and Triton lays h along the lanes of a warp and d across warps.
    """
    hc = c * CHUNK_H + h
    mask = ((d < D_M)[:, None] & (hc < HIDDEN)[None, :])[None, :, :]
    return tl.load(w_ptr + (d[:, None] * HIDDEN + hc[None, :])[None, :, :], mask=mask, other=0.0)


@triton.jit
def _memory_forward_kernel(
    drive_ptr,  # (B, T, H) fp32
    kappa_ptr,  # (BLOCK_D,)  zero-padded
    w_hm_t_ptr,  # (d_m, H): w_hm transposed
    w_zh_ptr,  # (d_m, H)
    b_z_ptr,  # (BLOCK_D,)  zero-padded
    memory_ptr,  # out (B, T, d_m)
    pre_ptr,  # out (B, T, H) when SAVE: p_t
    tanh_ptr,  # out (B, T, d_m) when SAVE: u_t
    batch,
    steps,
    update_scale,  # lambda * 1.7159
    never,  # 0: guards a store that keeps the L1 prefetch alive and never happens
    D_M: tl.constexpr,  # d_m and H are compile-time constants: exact strides, vector loads
    HIDDEN: tl.constexpr,
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_D: tl.constexpr,  # next power of two >= d_m
    BLOCK_H: tl.constexpr,  # next power of two >= H (the prefetch)
    CHUNK_H: tl.constexpr,  # hidden units per chunk
    NUM_CHUNKS: tl.constexpr,  # cdiv(H, CHUNK_H); 1: weights resident in registers
    SILU: tl.constexpr,
    SAVE: tl.constexpr,  # write p_t and u_t for the backward
    UNROLL: tl.constexpr,  # unroll factor of the chunk loop
    CHUNK_STAGES: tl.constexpr,  # software-pipelining depth of the chunk loop
    PREFETCH: tl.constexpr,  # touch the next step's drive row early so its chunks hit L1
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, CHUNK_H)
    row_ok = rows < batch

    if NUM_CHUNKS == 1:  # resident: both tiles stay in registers for the whole run
        w1 = _weight_chunk(w_hm_t_ptr, 0, d, h, CHUNK_H, D_M, HIDDEN)
        w2 = _weight_chunk(w_zh_ptr, 0, d, h, CHUNK_H, D_M, HIDDEN)
    kappa = tl.load(kappa_ptr + d)[None, :]
    b_z = tl.load(b_z_ptr + d)[None, :]
    gain = update_scale * (1.0 - kappa)  # G; zero on padded lanes, so they stay zero

    # row bases in int64: B * T * H can pass 2**31 for whole-simulation inference
    rows64 = rows.to(tl.int64)
    h_rows = (rows64 * steps * HIDDEN)[:, None]
    d_offsets = (rows64 * steps * D_M)[:, None] + d[None, :]
    d_mask = row_ok[:, None] & (d < D_M)[None, :]
    if PREFETCH:
        h_all = tl.arange(0, BLOCK_H)
        sink = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)

    memory = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for t in range(steps):
        if PREFETCH:
            has_next = (rows * 0 + t + 1 < steps)[:, None]
            drive_next = tl.load(drive_ptr + h_rows + (t + 1) * HIDDEN + h_all[None, :],
                                 mask=row_ok[:, None] & (h_all < HIDDEN)[None, :] & has_next, other=0.0)
        decayed = kappa * memory
        acc = tl.zeros((BLOCK_B, BLOCK_D, CHUNK_H), dtype=tl.float32)  # W_zh * act(p), summed over h below
        for c in tl.range(NUM_CHUNKS, num_stages=CHUNK_STAGES, loop_unroll_factor=UNROLL):
            if NUM_CHUNKS > 1:
                w1 = _weight_chunk(w_hm_t_ptr, c, d, h, CHUNK_H, D_M, HIDDEN)
                w2 = _weight_chunk(w_zh_ptr, c, d, h, CHUNK_H, D_M, HIDDEN)
            hc = c * CHUNK_H + h
            hc_offsets = h_rows + t * HIDDEN + hc[None, :]
            hc_mask = row_ok[:, None] & (hc < HIDDEN)[None, :]
            drive = tl.load(drive_ptr + hc_offsets, mask=hc_mask, other=0.0)
            pre = drive + tl.sum(decayed[:, :, None] * w1, axis=1)  # (B, CHUNK_H): drive + W_hm a
            acc += w2 * _activation(pre, SILU)[:, None, :]
            if SAVE:
                tl.store(pre_ptr + hc_offsets, pre, mask=hc_mask)
        z = tl.sum(acc, axis=2) + b_z  # (B, D)
        u = _tanh(2.0 / 3.0 * z)
        memory = decayed + gain * u
        tl.store(memory_ptr + d_offsets + t * D_M, memory, mask=d_mask)
        if SAVE:
            tl.store(tanh_ptr + d_offsets + t * D_M, u, mask=d_mask)
        if PREFETCH:
            sink += drive_next
    if PREFETCH:
        tl.store(memory_ptr + rows64 * steps * D_M, tl.sum(sink, axis=1), mask=row_ok & (rows * 0 + never != 0))


@triton.jit
def _memory_backward_kernel(
    grad_memory_ptr,  # (B, T, d_m) dL/dm_t from the layers above
    memory_ptr,  # (B, T, d_m) saved m_t
    pre_ptr,  # (B, T, H) saved p_t
    tanh_ptr,  # (B, T, d_m) saved u_t
    kappa_ptr,  # (BLOCK_D,)
    w_hm_t_ptr,  # (d_m, H): w_hm transposed, as in the forward
    w_zh_ptr,  # (d_m, H), as in the forward
    grad_drive_ptr,  # out (B, T, H)
    grad_z_ptr,  # out (B, T, d_m)
    grad_kappa_ptr,  # out (B, d_m): per-row partial sums over time
    batch,
    steps,
    update_scale,
    never,
    D_M: tl.constexpr,
    HIDDEN: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    CHUNK_H: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    SILU: tl.constexpr,
    UNROLL: tl.constexpr,
    CHUNK_STAGES: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, CHUNK_H)
    row_ok = rows < batch

    # the adjoint products reduce the same tiles over the other axis:
    # W_zh^T gz sums W2 over d, W_hm^T gp sums W1 over h
    if NUM_CHUNKS == 1:
        w1 = _weight_chunk(w_hm_t_ptr, 0, d, h, CHUNK_H, D_M, HIDDEN)
        w2 = _weight_chunk(w_zh_ptr, 0, d, h, CHUNK_H, D_M, HIDDEN)
    kappa = tl.load(kappa_ptr + d)[None, :]
    gain = update_scale * (1.0 - kappa)

    rows64 = rows.to(tl.int64)
    h_rows = (rows64 * steps * HIDDEN)[:, None]
    d_offsets = (rows64 * steps * D_M)[:, None] + d[None, :]
    d_mask = row_ok[:, None] & (d < D_M)[None, :]
    if PREFETCH:
        h_all = tl.arange(0, BLOCK_H)
        sink = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)

    carry = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)  # kappa * ga_{t+1}
    grad_kappa = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)

    # step t needs dL/dm_t, u_t and m_{t-1} (d-vectors, prefetched one step back) and p_t (chunks)
    # (steps >= 1, checked by the caller; masks on the step index are built as tensors)
    last = steps - 1
    has_prev = (rows * 0 + last >= 1)[:, None]
    grad_out = tl.load(grad_memory_ptr + d_offsets + last * D_M, mask=d_mask, other=0.0)
    u = tl.load(tanh_ptr + d_offsets + last * D_M, mask=d_mask, other=0.0)
    memory_prev = tl.load(memory_ptr + d_offsets + (last - 1) * D_M, mask=d_mask & has_prev, other=0.0)
    for i in range(steps):
        t = last - i
        step = rows * 0 + t
        has_prev = (step >= 1)[:, None]
        has_prev2 = (step >= 2)[:, None]
        grad_out_next = tl.load(grad_memory_ptr + d_offsets + (t - 1) * D_M, mask=d_mask & has_prev, other=0.0)
        u_next = tl.load(tanh_ptr + d_offsets + (t - 1) * D_M, mask=d_mask & has_prev, other=0.0)
        memory_prev_next = tl.load(memory_ptr + d_offsets + (t - 2) * D_M, mask=d_mask & has_prev2, other=0.0)
        if PREFETCH:
            pre_next = tl.load(pre_ptr + h_rows + (t - 1) * HIDDEN + h_all[None, :],
                               mask=row_ok[:, None] & (h_all < HIDDEN)[None, :] & has_prev, other=0.0)

        grad_m = grad_out + carry
        grad_z = gain * grad_m * (2.0 / 3.0) * (1.0 - u * u)
        acc = tl.zeros((BLOCK_B, BLOCK_D, CHUNK_H), dtype=tl.float32)  # W_hm^T * gp, summed over h below
        for c in tl.range(NUM_CHUNKS, num_stages=CHUNK_STAGES, loop_unroll_factor=UNROLL):
            if NUM_CHUNKS > 1:
                w1 = _weight_chunk(w_hm_t_ptr, c, d, h, CHUNK_H, D_M, HIDDEN)
                w2 = _weight_chunk(w_zh_ptr, c, d, h, CHUNK_H, D_M, HIDDEN)
            hc = c * CHUNK_H + h
            hc_offsets = h_rows + t * HIDDEN + hc[None, :]
            hc_mask = row_ok[:, None] & (hc < HIDDEN)[None, :]
            pre = tl.load(pre_ptr + hc_offsets, mask=hc_mask, other=0.0)
            grad_act = tl.sum(grad_z[:, :, None] * w2, axis=1)  # (B, CHUNK_H): W_zh^T gz
            grad_pre = grad_act * _activation_slope(pre, SILU)
            tl.store(grad_drive_ptr + hc_offsets, grad_pre, mask=hc_mask)
            acc += w1 * grad_pre[:, None, :]
        grad_decayed = grad_m + tl.sum(acc, axis=2)  # (B, D): gm + W_hm^T gp
        grad_kappa += grad_decayed * memory_prev - update_scale * grad_m * u
        carry = kappa * grad_decayed
        tl.store(grad_z_ptr + d_offsets + t * D_M, grad_z, mask=d_mask)

        grad_out = grad_out_next
        u = u_next
        memory_prev = memory_prev_next
        if PREFETCH:
            sink += pre_next

    tl.store(grad_kappa_ptr + rows[:, None] * D_M + d[None, :], grad_kappa, mask=d_mask)
    if PREFETCH:
        tl.store(grad_z_ptr + rows64 * steps * D_M, tl.sum(sink, axis=1), mask=row_ok & (rows * 0 + never != 0))


def _block(n: int) -> int:
    return max(triton.next_power_of_2(n), 2)


def launch_config(batch: int, d_m: int, hidden: int, override: str | None = None) -> dict:
    """Kernel meta-parameters for a problem size: rows per program, warps, hidden-unit chunks.

    Chosen from a sweep on an H100 (bench/elm_speed.py --sweep, docs/kernels.md): the recurrence
    is latency-bound, so one batch row per program, on as many SMs as the batch allows, and
    more rows per program only once every SM already holds two programs; few warps (2 for
    d_m ~20, 4 for d_m ~100), since each step's reductions are cheaper across fewer warps;
    both weight tiles kept in registers while they need <= 64 registers a thread, else re-read
    from L1 in chunks of 32 hidden units.
    `override` = "block_b,num_warps,chunk_h,unroll,stages,prefetch" sets them instead (bench/elm_speed.py --sweep).
    """
    block_d, block_h = _block(d_m), _block(hidden)
    if override:
        block_b, num_warps, chunk_h, unroll, stages, prefetch = (int(x) for x in override.split(","))
        block_b = triton.next_power_of_2(block_b)
    else:
        sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count \
            if torch.cuda.is_available() else 132
        block_b = 1
        while block_b < 16 and triton.cdiv(batch, block_b) > 2 * sms:
            block_b *= 2
        tile = block_d * block_h
        num_warps = 2 if tile <= 2048 else 4
        chunk_h = block_h if 2 * tile <= 64 * 32 * num_warps else 32
        unroll, stages, prefetch = 1, 1, 1
    chunk_h = min(_block(chunk_h), block_h)
    num_chunks = triton.cdiv(hidden, chunk_h)
    return {"BLOCK_B": block_b, "BLOCK_D": block_d, "BLOCK_H": block_h, "CHUNK_H": chunk_h,
            "NUM_CHUNKS": num_chunks, "UNROLL": max(1, min(unroll, num_chunks)), "CHUNK_STAGES": stages,
            "PREFETCH": bool(prefetch and num_chunks > 1), "num_warps": num_warps}


def _padded(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """x (fp32) zero-padded at the end of each axis to `shape` (kappa and b_z: padded lanes stay zero)."""
    out = x.new_zeros(shape, dtype=torch.float32)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def _forward(drive, kappa_m, w_hm, w_zh, b_z, lambda_value, silu, save, config=None):
    """Launch the forward kernel. drive (B, T, H) contiguous fp32; parameters fp32, unpadded."""
    batch, steps, hidden = drive.shape
    d_m = kappa_m.shape[0]
    memory = torch.empty(batch, steps, d_m, device=drive.device, dtype=torch.float32)
    pre = torch.empty(batch, steps, hidden, device=drive.device, dtype=torch.float32) if save else memory
    tanh_z = torch.empty_like(memory) if save else memory
    if batch == 0 or steps == 0:
        return memory, pre, tanh_z
    config = config or launch_config(batch, d_m, hidden)
    block_d = config["BLOCK_D"]
    grid = (triton.cdiv(batch, config["BLOCK_B"]),)
    _memory_forward_kernel[grid](
        drive, _padded(kappa_m, block_d), w_hm.t().contiguous(), w_zh, _padded(b_z, block_d), memory, pre, tanh_z,
        batch, steps, float(lambda_value) * SCALED_TANH_GAIN, 0, D_M=d_m, HIDDEN=hidden,
        SILU=silu, SAVE=save, **config,
    )
    return memory, pre, tanh_z


def _backward(grad_memory, memory, pre, tanh_z, kappa_m, w_hm, w_zh, lambda_value, silu, config=None):
    """Launch the backward kernel: dL/d drive (B, T, H), dL/dz (B, T, D), per-row dL/dkappa (B, D)."""
    batch, steps, d_m = memory.shape
    hidden = pre.shape[2]
    grad_drive = torch.empty_like(pre)
    grad_z = torch.empty_like(memory)
    grad_kappa_rows = torch.empty(batch, d_m, device=memory.device, dtype=torch.float32)
    if batch == 0 or steps == 0:
        grad_kappa_rows.zero_()
        return grad_drive, grad_z, grad_kappa_rows
    config = config or launch_config(batch, d_m, hidden)
    block_d = config["BLOCK_D"]
    grid = (triton.cdiv(batch, config["BLOCK_B"]),)
    _memory_backward_kernel[grid](
        grad_memory, memory, pre, tanh_z, _padded(kappa_m, block_d), w_hm.t().contiguous(), w_zh,
        grad_drive, grad_z, grad_kappa_rows,
        batch, steps, float(lambda_value) * SCALED_TANH_GAIN, 0, D_M=d_m, HIDDEN=hidden,
        SILU=silu, **config,
    )
    return grad_drive, grad_z, grad_kappa_rows


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


class _MemoryRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, drive, kappa_m, w_hm, w_zh, b_z, lambda_value, activation, save):
        silu = _ACTIVATIONS[activation] == 1
        kappa32, w_hm32, w_zh32 = _fp32(kappa_m), _fp32(w_hm), _fp32(w_zh)
        memory, pre, tanh_z = _forward(_fp32(drive), kappa32, w_hm32, w_zh32, _fp32(b_z), lambda_value, silu, save)
        if save:
            ctx.save_for_backward(memory, pre, tanh_z, kappa32, w_hm32, w_zh32)
        ctx.lambda_value, ctx.activation, ctx.silu = lambda_value, activation, silu
        ctx.dtypes = (drive.dtype, kappa_m.dtype, w_hm.dtype, w_zh.dtype, b_z.dtype)
        return memory.to(drive.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_memory):
        memory, pre, tanh_z, kappa32, w_hm32, w_zh32 = ctx.saved_tensors
        grad_drive, grad_z, grad_kappa_rows = _backward(
            _fp32(grad_memory), memory, pre, tanh_z, kappa32, w_hm32, w_zh32, ctx.lambda_value, ctx.silu)
        batch, steps, d_m = memory.shape
        hidden = pre.shape[2]
        need = ctx.needs_input_grad
        grads = [None] * 5
        if need[0]:
            grads[0] = grad_drive
        if need[1]:
            grads[1] = grad_kappa_rows.sum(0)
        if need[2]:
            # dW_hm = sum over (batch, time) of gp_t a_t^T, a_t = kappa * m_{t-1} (one fp32 GEMM)
            decayed = torch.zeros_like(memory)
            decayed[:, 1:] = memory[:, :-1] * kappa32
            grads[2] = grad_drive.reshape(-1, hidden).t() @ decayed.reshape(-1, d_m)
        if need[3]:
            # dW_zh = sum over (batch, time) of gz_t h_t^T, h_t = act(p_t)
            act = activation_fn(ctx.activation)(pre)
            grads[3] = grad_z.reshape(-1, d_m).t() @ act.reshape(-1, hidden)
        if need[4]:
            grads[4] = grad_z.sum((0, 1))
        grads = [g.to(dtype) if g is not None else None for g, dtype in zip(grads, ctx.dtypes)]
        return (*grads, None, None, None)


def memory_recurrence_fused(
    drive: torch.Tensor,  # (B, T, H)
    kappa_m: torch.Tensor,  # (d_m,)
    w_hm: torch.Tensor,  # (H, d_m)
    w_zh: torch.Tensor,  # (d_m, H)
    b_z: torch.Tensor,  # (d_m,)
    lambda_value: float,
    activation: str = "relu",
) -> torch.Tensor:
    """Memory states m_1..m_T, shape (B, T, d_m), computed in fp32 by the fused kernels."""
    if activation not in _ACTIVATIONS:
        activation_fn(activation)  # raises the reference's error
    batch, steps, hidden = drive.shape
    d_m = kappa_m.shape[0]
    if w_hm.shape != (hidden, d_m) or w_zh.shape != (d_m, hidden) or b_z.shape != (d_m,):
        raise ValueError(f"shape mismatch: drive {tuple(drive.shape)}, kappa_m {tuple(kappa_m.shape)}, "
                         f"w_hm {tuple(w_hm.shape)}, w_zh {tuple(w_zh.shape)}, b_z {tuple(b_z.shape)}")
    inputs = (drive, kappa_m, w_hm, w_zh, b_z)
    if not all(x.is_cuda for x in inputs) and not _INTERPRETING:
        raise ValueError("the fused ELM kernel needs CUDA tensors (use recurrence='reference' on CPU)")
    save = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    return _MemoryRecurrence.apply(drive, kappa_m, w_hm, w_zh, b_z, float(lambda_value), activation, save)
