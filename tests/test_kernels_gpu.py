"""The fused Triton kernels against the reference loop on a CUDA device (run on the GPU machine):

    python3 -m pytest tests/test_kernels_gpu.py -m gpu

"Within fp32 tolerance" is measured, not assumed: for every output and gradient the fused fp32
result is compared with the reference in float64, and its error must stay within a small
multiple of the reference loop's own fp32 error (plus a floor), so a kernel that dropped to tf32
or lost a term fails while legitimate fp32 rounding passes.
"""

from __future__ import annotations

import pytest
import torch

from surrogate.elm import memory_recurrence
from test_kernels import random_recurrence  # tests/ is on sys.path under pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NAMES = ["memory", "drive", "kappa_m", "w_hm", "w_zh", "b_z"]
LAMBDA = 5.0  # the ELM's default memory update gain


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    scale = b.abs().max().item()
    diff = (a.double() - b.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


def outputs_and_grads(implementation, inputs, grad_out, activation):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    memory = memory_recurrence(*inputs, LAMBDA, activation, implementation=implementation)
    grads = torch.autograd.grad(memory, inputs, grad_out.to(memory.dtype))
    return [memory.detach(), *grads]


def assert_within_fp32(fused, reference32, reference64, floor=2e-5, factor=8.0):
    for name, f, r32, r64 in zip(NAMES, fused, reference32, reference64):
        assert torch.isfinite(f).all(), f"{name}: non-finite values"
        fp32_error = relative_error(r32, r64)
        error = relative_error(f, r64)
        assert error <= max(floor, factor * fp32_error), (
            f"{name}: fused error {error:.2e} vs reference fp32 error {fp32_error:.2e}")


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("d_m", [1, 20, 100])
@pytest.mark.parametrize("steps", [1, 37, 500])
@pytest.mark.parametrize("batch", [1, 8, 33])
def test_fused_equals_reference(batch, steps, d_m, activation):
    seed = batch * 100_003 + steps * 101 + d_m * 7 + (activation == "silu")
    inputs64 = [x.cuda() for x in random_recurrence(d_m, 2 * d_m, batch, steps, seed=seed)]
    inputs32 = [x.float() for x in inputs64]
    grad_out = torch.randn(batch, steps, d_m, dtype=torch.float64, device="cuda",
                           generator=torch.Generator("cuda").manual_seed(seed))
    reference64 = outputs_and_grads("reference", inputs64, grad_out, activation)
    reference32 = outputs_and_grads("reference", inputs32, grad_out, activation)
    fused = outputs_and_grads("fused", inputs32, grad_out, activation)
    assert fused[0].shape == (batch, steps, d_m)
    assert_within_fp32(fused, reference32, reference64)


def test_fused_hidden_size_not_twice_d_m_and_no_grad_path():
    """H != 2 d_m (non-power-of-two both), and the inference path (no saved tensors) gives the same memory."""
    inputs = [x.cuda().float() for x in random_recurrence(13, 50, batch=5, steps=60, seed=3)]
    reference = memory_recurrence(*inputs, LAMBDA, "silu", implementation="reference")
    with torch.no_grad():
        fused = memory_recurrence(*inputs, LAMBDA, "silu", implementation="fused")
    assert relative_error(fused, reference) < 1e-5


def test_fused_large_batch_uses_several_rows_per_program():
    """A batch over the SM count takes the multi-row path of the kernels."""
    from surrogate.kernels.fused import launch_config

    batch = 4 * torch.cuda.get_device_properties(0).multi_processor_count + 3
    assert launch_config(batch, 20, 40)["BLOCK_B"] > 1
    inputs64 = [x.cuda() for x in random_recurrence(20, 40, batch, steps=50, seed=4)]
    grad_out = torch.randn(batch, 50, 20, dtype=torch.float64, device="cuda")
    reference64 = outputs_and_grads("reference", inputs64, grad_out, "relu")
    reference32 = outputs_and_grads("reference", [x.float() for x in inputs64], grad_out, "relu")
    fused = outputs_and_grads("fused", [x.float() for x in inputs64], grad_out, "relu")
    assert_within_fp32(fused, reference32, reference64)


# ----------------------------------------------------------------------------- whole models

def _model_grads(model, x, implementation):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    output = model(x, recurrence=implementation)
    # a loss touching both channels at every step
    weights = torch.linspace(0.5, 1.5, output.shape[1], device=x.device)[None, :, None]
    (output * weights).square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["input_spikes"] = x.grad.detach().clone()
    return output.detach(), grads


@pytest.mark.parametrize("kind,d_m,activation", [("elm", 100, "relu"), ("branch-elm", 20, "relu"),
                                                  ("branch-elm", 100, "silu"), ("elm", 7, "silu")])
def test_models_fused_equal_reference(kind, d_m, activation):
    from surrogate.elm import ELM, ELMConfig

    torch.manual_seed(d_m)
    branches = {"num_branch": 45, "num_synapse_per_branch": 100} if kind == "branch-elm" else {}
    model = ELM(ELMConfig(num_memory=d_m, mlp_activation=activation, learn_memory_tau=True, **branches)).cuda()
    x = (torch.rand(4, 300, 1278, device="cuda") < 0.02).float()
    out_ref, grads_ref = _model_grads(model, x, "reference")
    out_fused, grads_fused = _model_grads(model, x, "fused")
    assert relative_error(out_fused, out_ref) < 1e-4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable | {"input_spikes"} == set(grads_ref) == set(grads_fused)
    for name in grads_ref:
        error = relative_error(grads_fused[name], grads_ref[name])
        assert error < 2e-4, f"{kind} d_m {d_m}: gradient of {name} differs by {error:.2e}"
