"""The ELM neuron as a sequence model (surrogate/sequence.py): readouts, encodings, learning, long T, the LSTM budget."""

from __future__ import annotations

import time

import pytest
import torch

from surrogate.elm import ELMConfig, num_parameters
from surrogate.sequence import (LSTMBaselineConfig, SequenceModelConfig, build_sequence_model, lstm_hidden_for_budget,
                                lstm_parameters, pool_readout, random_routing, saved_activation_bytes,
                                sequence_model_from_dict, window_routing)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_elm(readout: str = "last", kind: str = "elm", input_kind: str = "tokens", input_size: int = 8,
              classes: int = 4, **core) -> torch.nn.Module:
    torch.manual_seed(0)
    defaults = dict(num_memory=6, memory_tau_max=100.0)
    if kind == "branch-elm":
        defaults.update(num_branch=3, num_synapse_per_branch=4)
    config = ELMConfig(num_input=12, **{**defaults, **core})
    return build_sequence_model(kind, input_kind, input_size, classes, SequenceModelConfig(readout=readout, embedding_dim=12),
                                config)


# --------------------------------------------------------------------------- readouts and lengths

@pytest.mark.parametrize("kind", ["elm", "branch-elm", "lstm"])
def test_last_readout_ignores_everything_after_length(kind):
    if kind == "lstm":
        torch.manual_seed(0)
        model = build_sequence_model("lstm", "tokens", 8, 4, SequenceModelConfig(embedding_dim=12), LSTMBaselineConfig(hidden_size=5))
    else:
        model = small_elm("last", kind)
    model.eval()
    x = torch.randint(1, 8, (3, 30))
    lengths = torch.tensor([30, 17, 1])
    other = x.clone()
    for row, n in enumerate(lengths.tolist()):
        other[row, n:] = torch.randint(0, 8, (30 - n,))  # different content after the end
    with torch.no_grad():
        out, out_other = model(x, lengths), model(other, lengths)
        per_step = model.per_step(x)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, out_other)
    torch.testing.assert_close(out, per_step[torch.arange(3), lengths - 1])
    # truncated sequences give the same answer as the padded ones
    for row, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            alone = model(x[row:row + 1, :n])
        torch.testing.assert_close(alone[0], out[row], rtol=1e-5, atol=1e-6)


def test_mean_readout_averages_the_valid_steps_only():
    model = small_elm("mean").eval()
    x = torch.randint(1, 8, (2, 25))
    lengths = torch.tensor([25, 9])
    with torch.no_grad():
        out = model(x, lengths)
        per_step = model.per_step(x)
        other = x.clone()
        other[1, 9:] = 3
        out_other = model(other, lengths)
    torch.testing.assert_close(out[0], per_step[0].mean(0))
    torch.testing.assert_close(out[1], per_step[1, :9].mean(0))
    torch.testing.assert_close(out, out_other)


def test_per_step_readout_and_pool_readout():
    model = small_elm("per-step").eval()
    x = torch.randint(1, 8, (2, 11))
    with torch.no_grad():
        out = model(x, torch.tensor([11, 4]))
    assert out.shape == (2, 11, 4)
    steps = torch.arange(24, dtype=torch.float32).view(2, 4, 3)
    torch.testing.assert_close(pool_readout(steps, None, "last"), steps[:, -1])
    torch.testing.assert_close(pool_readout(steps, torch.tensor([2, 4]), "mean"),
                               torch.stack([steps[0, :2].mean(0), steps[1].mean(0)]))


# --------------------------------------------------------------------------- encodings and the neuron

def test_encodings_and_input_kinds():
    torch.manual_seed(0)
    pixels = build_sequence_model("elm", "pixels", 256, 2, SequenceModelConfig(embedding_dim=5), ELMConfig(num_input=5, num_memory=4))
    out = pixels(torch.randint(0, 256, (2, 16)))
    assert out.shape == (2, 2)
    assert pixels.core.config.num_input == 5
    spikes = build_sequence_model("branch-elm", "spikes", 40, 3, SequenceModelConfig(),
                                  ELMConfig(num_input=40, num_memory=4, num_branch=5, num_synapse_per_branch=8))
    assert spikes.core.config.num_input == 40  # channels go in as they are
    out = spikes((torch.rand(2, 20, 40) < 0.1).float(), torch.tensor([20, 5]))
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match="expected inputs"):
        spikes(torch.rand(2, 20, 39))
    real = build_sequence_model("elm", "real", 3, 2, SequenceModelConfig(), ELMConfig(num_input=3, num_memory=4))
    assert real(torch.randn(4, 7, 3)).shape == (4, 2)


def test_one_hot_encoding_of_tokens_and_grey_levels():
    # the paper's LRA input (appendix B): tokens one-hot, grey values binned into 16 (Pathfinder-X: 8) levels
    model = SequenceModelConfig(encoding="one-hot", grey_levels=16)
    tokens = build_sequence_model("elm", "tokens", 16, 10, model, ELMConfig(num_memory=4))
    assert tokens.core.config.num_input == 16
    ids = torch.tensor([[3, 15, 0, 0]])
    encoded = tokens.encoding(ids)
    assert encoded.shape == (1, 4, 16)
    assert encoded[0, 0].argmax() == 3 and encoded[0, 1].argmax() == 15 and encoded[0, :2].sum() == 2
    assert encoded[0, 2:].abs().sum() == 0  # padding enters as nothing
    pixels = build_sequence_model("elm", "pixels", 256, 2, model, ELMConfig(num_memory=4))
    grey = torch.tensor([[0, 15, 16, 128, 255]])
    levels = pixels.encoding(grey).argmax(-1)
    assert levels.tolist() == [[0, 0, 1, 8, 15]] and pixels.encoding(grey).sum().item() == 5
    eight = build_sequence_model("elm", "pixels", 256, 2, SequenceModelConfig(encoding="one-hot", grey_levels=8),
                                 ELMConfig(num_memory=4))
    assert eight.core.config.num_input == 8 and eight.encoding(grey).argmax(-1).tolist() == [[0, 0, 0, 4, 7]]
    assert num_parameters(pixels.encoding) == 0
    with pytest.raises(ValueError, match="grey_levels"):
        SequenceModelConfig(encoding="one-hot", grey_levels=12)
    with pytest.raises(ValueError, match="encoding"):
        SequenceModelConfig(encoding="onehot")


@pytest.mark.parametrize("num_memory, published", [(100, 44_000), (150, 96_000), (200, 168_000)])
def test_pathfinder_elm_has_the_papers_parameter_count(num_memory, published):
    # Table S5 of the ELM paper: the Pathfinder ELM (16 one-hot grey levels, d_m memory units) has 44k / 96k / 168k
    model = build_sequence_model("elm", "pixels", 256, 2, SequenceModelConfig(encoding="one-hot", grey_levels=16),
                                 ELMConfig(num_memory=num_memory))
    assert abs(num_parameters(model) - published) / published < 0.01


def test_chrono_lstm_starts_with_long_memory_spans():
    # Tallec & Ollivier (2018): forget-gate bias log(u), input-gate bias -log(u), u ~ U(1, T_max - 1)
    torch.manual_seed(0)
    model = build_sequence_model("lstm", "pixels", 256, 2, SequenceModelConfig(encoding="one-hot"),
                                 LSTMBaselineConfig(hidden_size=40, chrono_max_steps=1000.0))
    lstm = model.core.lstm
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[40:80].detach()
    gate_in = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[:40].detach()
    assert forget.min() >= 0 and forget.max() <= torch.log(torch.tensor(999.0)) + 1e-5
    assert forget.max() > torch.log(torch.tensor(100.0))  # spans of hundreds of steps among 40 units
    torch.testing.assert_close(gate_in, -forget)
    # a unit's characteristic memory span 1 / (1 - sigmoid(b_f)) reaches past 100 steps, far beyond the default init's ~2
    default = build_sequence_model("lstm", "pixels", 256, 2, SequenceModelConfig(encoding="one-hot"),
                                   LSTMBaselineConfig(hidden_size=40)).core.lstm
    span = 1 / (1 - torch.sigmoid(forget))
    default_span = 1 / (1 - torch.sigmoid((default.bias_ih_l0 + default.bias_hh_l0)[40:80].detach()))
    assert span.max() > 100 and default_span.max() < 5
    with pytest.raises(ValueError, match="chrono_max_steps"):
        LSTMBaselineConfig(chrono_max_steps=1.5)


def test_the_neuron_is_surrogate_elm_without_neuronio_signs():
    model = small_elm(kind="branch-elm")
    from surrogate.elm import ELM

    assert isinstance(model.core, ELM)
    assert torch.all(model.core.synapse_type == 1.0)  # no inhibitory half
    indices, valid = window_routing(12, 3, 4)
    assert indices.view(3, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] and valid.all()
    assert torch.equal(model.core.input_to_synapse_indices, indices)
    overlapping, valid = window_routing(10, 3, 6)  # stride 4: branches overlap, entries past the end masked
    assert overlapping.view(3, 6)[2].tolist() == [8, 9, 9, 9, 9, 9] and valid.view(3, 6)[2].tolist() == [True, True] + [False] * 4
    a, _ = random_routing(700, 10, 7, seed=3)
    b, _ = random_routing(700, 10, 7, seed=3)
    assert torch.equal(a, b) and a.max() < 700


def test_describe_round_trip():
    for model in (small_elm("mean", "branch-elm"),
                  build_sequence_model("lstm", "spikes", 10, 3, SequenceModelConfig(), LSTMBaselineConfig(parameter_budget=2000))):
        again = sequence_model_from_dict(model.describe())
        again.load_state_dict(model.state_dict())
        x = torch.randint(1, 8, (2, 9)) if model.input_kind == "tokens" else torch.rand(2, 9, 10)
        with torch.no_grad():
            torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_learnable_memory_timescales_stay_in_range_and_learn():
    model = small_elm(learn_memory_tau=True, memory_tau_min=2.0, memory_tau_max=3000.0)
    tau = model.core.tau_m.detach()
    assert tau.min() >= 2.0 and tau.max() <= 3000.0 and tau.max() > 1000.0
    out = model(torch.randint(1, 8, (2, 10)))
    out.sum().backward()
    assert model.core.proto_tau_m.grad is not None and torch.isfinite(model.core.proto_tau_m.grad).all()


# --------------------------------------------------------------------------- it learns a long-delay task

def test_elm_learns_to_recall_the_first_token_after_a_long_delay():
    """Label = the first token (4 classes), followed by 60 steps of distractor tokens; read at the last step."""
    torch.manual_seed(0)
    classes, steps = 4, 60

    def batch(n, generator):
        first = torch.randint(0, classes, (n,), generator=generator)
        x = torch.randint(classes + 1, classes + 5, (n, steps), generator=generator)  # distractors 5..8
        x[:, 0] = first + 1
        return x, first

    model = build_sequence_model("elm", "tokens", classes + 5, classes, SequenceModelConfig(readout="last", embedding_dim=8),
                                 ELMConfig(num_input=8, num_memory=10, memory_tau_min=1.0, memory_tau_max=200.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(400):
        x, y = batch(32, generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = batch(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.95, accuracy  # chance: 0.25


# --------------------------------------------------------------------------- long sequences

def test_forward_and_backward_at_16384_steps_on_cpu():
    """Pathfinder-X length through the reference recurrence: finite gradients for every parameter."""
    torch.manual_seed(0)
    model = build_sequence_model("elm", "pixels", 256, 2, SequenceModelConfig(embedding_dim=4),
                                 ELMConfig(num_input=4, num_memory=4, memory_tau_max=16384.0, learn_memory_tau=True))
    x = torch.randint(0, 256, (2, 16384))
    started = time.perf_counter()
    out = model(x, torch.tensor([16384, 9000]), recurrence="reference")
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert time.perf_counter() - started < 60


def test_saved_activations_grow_linearly_in_time():
    """What autograd keeps per step and sequence does not depend on T (no O(T^2) or hidden growth)."""
    model = small_elm("last")
    steps = (256, 1024, 2048)
    saved = [saved_activation_bytes(model, torch.randint(1, 8, (2, t)), recurrence="reference") for t in steps]
    # bytes = fixed + per_step * T: the same slope over both intervals
    slopes = [(saved[i + 1] - saved[i]) / (steps[i + 1] - steps[i]) for i in range(2)]
    assert slopes[1] == pytest.approx(slopes[0], rel=0.01), (saved, slopes)
    assert saved[0] - slopes[0] * steps[0] < 0.05 * saved[-1]  # and the fixed part is small


# --------------------------------------------------------------------------- the LSTM baseline

@pytest.mark.parametrize("budget,width,classes,layers", [(10_000, 32, 10, 1), (50_000, 16, 2, 1), (200_000, 700, 19, 1),
                                                         (120_000, 32, 10, 2), (3_000, 16, 2, 1)])
def test_lstm_hidden_size_meets_a_parameter_budget(budget, width, classes, layers):
    hidden = lstm_hidden_for_budget(budget, width, classes, layers)
    count = lstm_parameters(width, hidden, layers, classes)
    assert abs(count - budget) / budget < 0.03, (hidden, count)
    model = build_sequence_model("lstm", "real", width, classes, SequenceModelConfig(),
                                 LSTMBaselineConfig(hidden_size=hidden, num_layers=layers))
    assert num_parameters(model) == count  # the formula is PyTorch's count


def test_lstm_matches_the_elm_of_the_same_config():
    model_config = SequenceModelConfig(embedding_dim=32)
    elm_config = ELMConfig(num_input=32, num_memory=100)
    elm = build_sequence_model("elm", "tokens", 16, 10, model_config, elm_config)
    lstm = build_sequence_model("lstm", "tokens", 16, 10, model_config, LSTMBaselineConfig(), budget_core=elm_config)
    assert lstm.core_config.parameter_budget == num_parameters(elm)
    assert abs(num_parameters(lstm) - num_parameters(elm)) / num_parameters(elm) < 0.03
