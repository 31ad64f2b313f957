"""The ELM memory recurrence on CPU: the step function and its loop, dispatch, the reference's
gradients, and (where Triton is installed) the fused kernels run by Triton's CPU interpreter
against the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from surrogate.elm import memory_recurrence


def memory_recurrence_reference(*args):
    return memory_recurrence(*args, implementation="reference")


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def random_recurrence(d_m: int, hidden: int, batch: int, steps: int, dtype=torch.float64, seed: int = 0):
    """Inputs as an ELM would have them: kappa from log-spaced tau in [1, 150] ms, uniform weights."""
    g = torch.Generator().manual_seed(seed)
    tau = torch.logspace(0, torch.log10(torch.tensor(150.0)).item(), d_m, dtype=dtype)
    kappa_m = torch.exp(-1.0 / tau)
    bound_h, bound_z = 1.0 / (d_m + 10) ** 0.5, 1.0 / hidden**0.5
    w_hm = (torch.rand(hidden, d_m, generator=g, dtype=dtype) * 2 - 1) * bound_h
    w_zh = (torch.rand(d_m, hidden, generator=g, dtype=dtype) * 2 - 1) * bound_z
    b_z = (torch.rand(d_m, generator=g, dtype=dtype) * 2 - 1) * bound_z
    drive = torch.randn(batch, steps, hidden, generator=g, dtype=dtype)
    return drive, kappa_m, w_hm, w_zh, b_z


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_cpu_dispatch_is_the_reference(activation):
    drive, *params = random_recurrence(7, 14, batch=3, steps=25, dtype=torch.float32)
    expected = memory_recurrence_reference(drive, *params, 5.0, activation)
    for implementation in ("auto", "reference"):
        got = memory_recurrence(drive, *params, 5.0, activation, implementation=implementation)
        assert torch.equal(got, expected)
    assert expected.shape == (3, 25, 7)


def test_dispatch_rejects_unknown_implementation_and_fused_on_cpu():
    drive, *params = random_recurrence(3, 6, batch=1, steps=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="implementation must be one of auto, reference, fused"):
        memory_recurrence(drive, *params, 1.0, "relu", implementation="cuda")
    # the fused kernel needs triton and CUDA tensors: either is a clear error on a CPU machine
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        with pytest.raises((ImportError, ValueError)):
            memory_recurrence(drive, *params, 1.0, "relu", implementation="fused")


def test_reference_rejects_unknown_activation():
    drive, *params = random_recurrence(3, 6, batch=1, steps=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="activation"):
        memory_recurrence_reference(drive, *params, 1.0, "tanh")


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_reference_gradcheck_float64(activation):
    """The reference's autograd graph (the ground truth for the fused backward) is exact."""
    inputs = [x.requires_grad_() for x in random_recurrence(3, 5, batch=2, steps=6, seed=1)]
    assert torch.autograd.gradcheck(lambda *xs: memory_recurrence_reference(*xs, 1.7, activation), inputs)


def test_reference_matches_the_equations_step_by_step():
    """m_t = kappa m_{t-1} + lambda (1 - kappa) 1.7159 tanh(2/3 (W_zh act(drive_t + W_hm kappa m_{t-1}) + b_z))."""
    drive, kappa, w_hm, w_zh, b_z = random_recurrence(4, 8, batch=2, steps=5, seed=2)
    memory = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(5):
        hidden = torch.relu(drive[:, t] + (kappa * memory) @ w_hm.T)
        z = hidden @ w_zh.T + b_z
        memory = kappa * memory + 0.9 * (1 - kappa) * 1.7159 * torch.tanh(2.0 / 3.0 * z)
        assert torch.allclose(memory_recurrence_reference(drive, kappa, w_hm, w_zh, b_z, 0.9, "relu")[:, t], memory)


_INTERPRETER_CHECK = textwrap.dedent(
    """
    import json, torch
    from tests.test_kernels import memory_recurrence, memory_recurrence_reference, random_recurrence
    errors = {}
    for d_m, batch, steps, activation in [(1, 2, 3, "relu"), (5, 3, 9, "silu"), (12, 2, 7, "relu")]:
        inputs64 = random_recurrence(d_m, 2 * d_m, batch, steps, seed=d_m)
        inputs64 = [x.requires_grad_() for x in inputs64]
        reference = memory_recurrence_reference(*inputs64, 5.0, activation)
        grad_out = torch.randn_like(reference)
        ref_grads = torch.autograd.grad(reference, inputs64, grad_out)
        inputs32 = [x.detach().float().requires_grad_() for x in inputs64]
        fused = memory_recurrence(*inputs32, 5.0, activation, implementation="fused")
        grads = torch.autograd.grad(fused, inputs32, grad_out.float())
        names = ["memory", "drive", "kappa_m", "w_hm", "w_zh", "b_z"]
        for name, a, b in zip(names, [fused, *grads], [reference, *ref_grads]):
            errors[f"{d_m}/{activation}/{name}"] = (
                (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30))
    print(json.dumps(errors))
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine tests/test_kernels_gpu.py runs the kernels")
def test_fused_kernels_in_triton_interpreter():
    """The Triton kernels themselves (forward, backward, launch code), run on CPU by Triton's interpreter."""
    pytest.importorskip("triton")
    path = os.pathsep.join(p for p in [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")] if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(errors) == 18
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-5, f"{worst}: relative max error {errors[worst]:.2e}"
