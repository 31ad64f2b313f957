"""The surrogate models: shapes, causality, gradient flow, the exponential filter, parameter counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from surrogate.elm import (ELM, ELMConfig, SCALED_TANH_GAIN, exponential_filter, memory_dynamics, neuronio_routing,
                           num_parameters)
from surrogate.lstm import LSTM, LSTMConfig
from surrogate.tcn import SPIKE_BIAS_INIT, TCN, TCNConfig, published_tcn_config

NUM_INPUT = 1278


def small_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "elm": ELM(ELMConfig(num_memory=6, learn_memory_tau=True)),
        "branch-elm": ELM(ELMConfig(num_memory=8, num_branch=45, num_synapse_per_branch=100, mlp_activation="silu")),
        "tcn": TCN(TCNConfig(depth=3, width=8, first_kernel_size=9, kernel_size=5)),
        "lstm": LSTM(LSTMConfig(hidden_size=8, num_layers=2)),
    }


def random_spikes(batch: int, steps: int, rate: float = 0.02, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, NUM_INPUT, generator=g) < rate).float()


@pytest.mark.parametrize("kind", ["elm", "branch-elm", "tcn", "lstm"])
def test_output_shape(kind):
    model = small_models()[kind].eval()
    with torch.no_grad():
        out = model(random_spikes(3, 37))
    assert out.shape == (3, 37, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["elm", "branch-elm", "tcn", "lstm"])
def test_causal(kind):
    """Changing inputs at t >= t0 leaves every output before t0 bit-for-bit unchanged."""
    model = small_models()[kind].eval()  # eval: batch norm uses running statistics
    x = random_spikes(2, 300, seed=1)
    t0 = 173  # inside a filter chunk, not at its edge
    y = random_spikes(2, 300, rate=0.2, seed=2)
    x_changed = x.clone()
    x_changed[:, t0:] = y[:, t0:]
    with torch.no_grad():
        before, after = model(x), model(x_changed)
    assert torch.equal(before[:, :t0], after[:, :t0])
    assert not torch.allclose(before[:, t0:], after[:, t0:])  # the perturbation does reach the output


@pytest.mark.parametrize("kind", ["elm", "branch-elm", "tcn", "lstm"])
def test_every_parameter_gets_a_gradient(kind):
    model = small_models()[kind].train()
    out = model(random_spikes(4, 60, rate=0.05, seed=3))
    target = torch.randn_like(out)
    torch.nn.functional.mse_loss(out, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("steps,chunk", [(1, 128), (50, 128), (300, 128), (257, 16), (64, 64)])
def test_exponential_filter_matches_the_step_loop(steps, chunk):
    a = torch.randn(3, steps, 5, dtype=torch.float64)
    kappa = float(np.exp(-1 / 5))
    expected = torch.zeros_like(a)
    trace = torch.zeros(3, 5, dtype=torch.float64)
    for t in range(steps):
        trace = kappa * trace + a[:, t]
        expected[:, t] = trace
    got = exponential_filter(a, kappa, chunk=chunk)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    got32 = exponential_filter(a.float(), kappa, chunk=chunk)
    assert torch.allclose(got32.double(), expected, rtol=1e-5, atol=1e-5)


def test_elm_forward_equals_a_step_by_step_loop():
    """The split computation (linear input side for all t, then the recurrence) equals the per-step model."""
    torch.manual_seed(4)
    model = ELM(ELMConfig(num_memory=5, num_branch=45, num_synapse_per_branch=100))
    with torch.no_grad():
        model.proto_w_s.uniform_(-0.2, 1.0)  # some synapses switched off by the relu
    x = random_spikes(2, 80, rate=0.05, seed=5)
    with torch.no_grad():
        got = model(x)
        c = model.config
        signed = x * model.synapse_type
        routed = signed[:, :, model.input_to_synapse_indices] * model.valid_indices_mask
        s = torch.zeros(2, c.num_synapse)
        m = torch.zeros(2, c.num_memory)
        kappa_m = model.kappa_m
        outputs = []
        for t in range(x.shape[1]):
            s = model.kappa_s * s + model.w_s * routed[:, t]
            b = s.view(2, c.num_branch, c.num_synapse_per_branch).sum(-1)
            h = torch.relu(model.w_hb(b) + model.w_hm(kappa_m * m))
            z = model.w_zh(h)
            m = kappa_m * m + c.lambda_value * (1 - kappa_m) * 1.7159 * torch.tanh(2 / 3 * z)
            outputs.append(model.w_y(m))
    assert torch.allclose(got, torch.stack(outputs, 1), rtol=1e-4, atol=1e-5)


def test_parameter_counts_follow_the_published_convention():
    # Branch-ELM d_m = 20: 4500 synapse weights + MLP (65 -> 40 -> 20) + readout; tau_m not trained
    assert num_parameters(ELM(ELMConfig(num_memory=20, num_branch=45))) == 8002
    assert num_parameters(ELM(ELMConfig(num_memory=100, num_branch=45, mlp_activation="silu"))) == 54002
    # learning tau_m adds d_m parameters
    assert num_parameters(ELM(ELMConfig(num_memory=20, num_branch=45, learn_memory_tau=True))) == 8022
    # plain ELM: one synapse per input
    d_m, h = 10, 20
    assert num_parameters(ELM(ELMConfig(num_memory=d_m))) == NUM_INPUT + (NUM_INPUT + d_m) * h + h + h * d_m + d_m + d_m * 2 + 2


def test_memory_time_constants_initialised_log_spaced():
    model = ELM(ELMConfig(num_memory=20, memory_tau_min=1.0, memory_tau_max=150.0))
    tau = model.tau_m.double()
    assert tau[0] == pytest.approx(1.0, abs=1e-4) and tau[-1] == pytest.approx(150.0, rel=1e-4)
    ratios = tau[1:] / tau[:-1]
    assert torch.allclose(ratios, ratios.mean().expand_as(ratios), rtol=1e-3)


def test_neuronio_routing_construction():
    indices, valid = neuronio_routing(NUM_INPUT, 45, 100)
    assert indices.shape == valid.shape == (4500,)
    assert indices[:4].tolist() == [0, 639, 1, 640]  # ex 0, inh 0, ex 1, inh 1
    stride = 29  # ceil(1278 / 45)
    branch = indices.view(45, 100)
    assert branch[1, 0].item() == 639 + 14  # interleaved entry 29 = inh 14
    assert branch[44, 1].item() == 1277 and not valid.view(45, 100)[44, 2:].any()  # past the end: masked
    covered = torch.unique(indices[valid])
    assert covered.tolist() == list(range(NUM_INPUT))  # every input reaches some branch
    # the last branches run past the end of the 1278 inputs: 4282 valid synapses in all
    assert valid.sum().item() == sum(min(100, max(0, NUM_INPUT - b * stride)) for b in range(45)) == 4282


def test_published_tcn_config():
    config = published_tcn_config()
    assert (config.depth, config.width) == (7, 128)
    assert config.kernel_sizes == [45] + [19] * 6
    assert config.receptive_field_ms == 153  # NMDA_TCN__DWT_7_128_153
    model = TCN(config)
    conv_params = NUM_INPUT * 128 * 45 + 128 + 6 * (128 * 128 * 19 + 128)
    assert num_parameters(model) == conv_params + 7 * 2 * 128 + 128 * 2 + 2


def test_tcn_published_weight_init():
    """weight_init = "published": truncated normal kernels (std 0.002, layer 1's 7.4M weights included; the heads'
    std 0.001 and 0.03), zero biases but the spike bias; the default keeps PyTorch's draw (std 1 / sqrt(3 fan_in))."""
    torch.manual_seed(3)
    published = TCN(dataclasses.replace(published_tcn_config(), weight_init="published"))
    for layer in published.layers:
        w = layer.conv.weight
        assert w.std().item() == pytest.approx(0.002 * 0.88, rel=0.02)  # a normal cut at 2 std keeps 0.88 of its std
        assert w.abs().max().item() <= 2 * 0.002 and layer.conv.bias.abs().max().item() == 0
    spike_row, soma_row = published.head.weight[:, :, 0]
    assert spike_row.abs().max().item() <= 0.002 and 0.02 < soma_row.std().item() < 0.032
    assert published.head.bias.tolist() == [SPIKE_BIAS_INIT, 0.0]
    default = TCN(published_tcn_config())
    fan_in = 128 * 19
    assert default.layers[1].conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.02)
    assert default.layers[1].conv.bias.abs().max().item() > 0
    with pytest.raises(ValueError, match="weight_init must be one of pytorch, published, got 'keras'"):
        TCNConfig(weight_init="keras")


def test_tcn_receptive_field_is_exact():
    """Output t depends on input t - (receptive field - 1) but not one step earlier."""
    # silu: no exactly-zero gradients, so every input in the field shows up
    config = TCNConfig(depth=3, width=4, first_kernel_size=7, kernel_size=4, batch_norm=False, activation="silu")
    model = TCN(config).eval()
    rf = config.receptive_field_ms
    x = random_spikes(1, 60, rate=0.5, seed=7).requires_grad_(True)
    model(x)[0, 50, 1].backward()
    touched = (x.grad[0].abs().sum(1) > 0).nonzero().flatten()
    assert touched.min().item() == 50 - (rf - 1) and touched.max().item() == 50


@pytest.mark.parametrize("dilation", [1, 2])
def test_tcn_layers_as_matrix_products_are_the_convolution(dilation):
    """matmul_layers computes the same causal convolution (one product per tap, summed on a diagonal), gradients too."""
    config = TCNConfig(num_input=30, depth=3, width=6, first_kernel_size=7, kernel_size=4, dilation=dilation,
                       batch_norm=False, activation="silu")
    torch.manual_seed(0)
    conv = TCN(config).double()
    matmul = TCN(dataclasses.replace(config, matmul_layers=3)).double()
    matmul.load_state_dict(conv.state_dict())  # the same parameters: checkpoints do not depend on the path
    assert [layer.conv.as_matmul for layer in matmul.layers] == [True, True, True]
    x = (torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(1)) < 0.2).double().requires_grad_(True)
    y_conv, y_matmul = conv(x), matmul(x)
    assert torch.allclose(y_conv, y_matmul, rtol=0, atol=1e-12)
    grads_conv = torch.autograd.grad(y_conv.square().sum(), [x, *conv.parameters()])
    grads_matmul = torch.autograd.grad(y_matmul.square().sum(), [x, *matmul.parameters()])
    for a, b in zip(grads_conv, grads_matmul):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_elm_forward_is_the_memory_dynamics_step_by_step():
    """On CPU the ELM's memory is memory_dynamics applied at every step from m_0 = 0, bit for bit."""
    model = small_models()["branch-elm"]
    x = random_spikes(2, 20, seed=6)
    with torch.no_grad():
        a = x @ model.branch_input_weights().T
        assert model.w_hb.out_features < a.shape[-1]  # forward projects before filtering (they commute)
        drive = exponential_filter(a @ model.w_hb.weight.T, model.kappa_s) + model.w_hb.bias
        kappa_m = model.kappa_m
        gain = model.config.lambda_value * (1.0 - kappa_m) * SCALED_TANH_GAIN
        memory, states = torch.zeros(2, model.config.num_memory), []
        for t in range(20):
            memory = memory_dynamics(memory, drive[:, t], kappa_m, model.w_hm.weight, model.w_zh.weight,
                                     model.w_zh.bias, gain, torch.nn.functional.silu)
            states.append(memory)
        expected = model.w_y(torch.stack(states, dim=1))
        assert torch.equal(model(x), expected)
        assert torch.equal(model(x, recurrence="reference"), expected)


def test_memory_dynamics_is_the_paper_update():
    """m_t = kappa m_{t-1} + lambda (1 - kappa) 1.7159 tanh(2/3 (W_zh act(drive_t + W_hm kappa m_{t-1}) + b_z))."""
    g = torch.Generator().manual_seed(3)
    kappa, memory = torch.rand(4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    drive, w_hm = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    w_zh, b_z = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    lam = 5.0
    expected = kappa * memory + lam * (1 - kappa) * 1.7159 * torch.tanh(
        2.0 / 3.0 * (torch.relu(drive + (kappa * memory) @ w_hm.T) @ w_zh.T + b_z))
    got = memory_dynamics(memory, drive, kappa, w_hm, w_zh, b_z, lam * (1 - kappa) * 1.7159, torch.relu)
    assert torch.allclose(got, expected, rtol=1e-13, atol=0)


def test_elm_recurrence_choice_is_an_argument():
    model = small_models()["elm"]
    x = random_spikes(1, 10, seed=4)
    with pytest.raises(ValueError, match="implementation must be one of"):
        model(x, recurrence="cuda")
    assert not hasattr(model, "recurrence_implementation")  # no hidden mutable switch


def test_lstm_baseline_has_the_papers_parameter_count():
    """The ELM paper's LSTM baseline: 858k parameters; 1 layer of 150 units over 1278 inputs, linear readout."""
    model = LSTM(LSTMConfig())
    assert num_parameters(model) == 4 * 150 * (NUM_INPUT + 150 + 2) + 150 * 2 + 2 == 858_302
    assert num_parameters(LSTM(LSTMConfig(hidden_size=4, num_layers=2))) == (
        4 * 4 * (NUM_INPUT + 4 + 2) + 4 * 4 * (4 + 4 + 2) + 4 * 2 + 2)


@pytest.mark.parametrize("model, bias", [
    (lambda: TCN(TCNConfig(depth=1, width=2)), SPIKE_BIAS_INIT),  # the published -2
    (lambda: TCN(TCNConfig(depth=1, width=2, spike_bias_init=-7.0)), -7.0),
    (lambda: ELM(ELMConfig(num_memory=2, spike_bias_init=-7.0)), -7.0),
    (lambda: LSTM(LSTMConfig(hidden_size=3, spike_bias_init=-6.5)), -6.5),
])
def test_spike_bias_starts_where_configured(model, bias):
    """The spike logit of an all-zero input starts at the configured bias (the readout of zero features)."""
    torch.manual_seed(0)
    m = model()
    head_bias = {TCN: lambda: m.head.bias, ELM: lambda: m.w_y.bias, LSTM: lambda: m.head.bias}[type(m)]()
    assert head_bias[0].item() == pytest.approx(bias)
    # the voltage channel keeps its default initialisation
    assert abs(head_bias[1].item()) < 1.0


def test_config_validation():
    with pytest.raises(ValueError):
        ELMConfig(mlp_activation="tanh")
    with pytest.raises(ValueError):
        ELMConfig(num_branch=10, num_synapse_per_branch=100)  # 10 x 100 cannot cover 1278 inputs
    with pytest.raises(ValueError):
        TCNConfig(activation="gelu")
    with pytest.raises(ValueError, match="spike_bias_init"):
        TCNConfig(spike_bias_init=-100.0)
    with pytest.raises(ValueError, match="matmul_layers"):
        TCNConfig(depth=3, matmul_layers=4)
    with pytest.raises(ValueError, match="num_layers > 1"):
        LSTMConfig(dropout=0.1)
    with pytest.raises(ValueError, match="positive"):
        LSTMConfig(hidden_size=0)
