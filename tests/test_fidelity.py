"""simulation.fidelity: spike pairing, the figures of a setting against its reference, the targets."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.fidelity import TARGETS, compare, meets_targets, pair_spikes, pool


def test_pair_spikes_takes_the_nearest_unpaired_partner_within_the_window():
    shifts, missed, extra = pair_spikes([10.0, 12.0, 100.0], [10.5, 11.0, 60.0])
    # 10 -> 10.5 (nearest), 12 -> 11.0 (10.5 is taken), 100 has none within 5 ms, 60 is extra
    np.testing.assert_allclose(shifts, [0.5, -1.0])
    assert (missed, extra) == (1, 1)


def traces(n, duration_ms=1000, seed=0):
    rng = np.random.default_rng(seed)
    return [-70.0 + rng.normal(0, 1, duration_ms) for _ in range(n)]


def test_compare_counts_shifts_misses_and_names_the_outlier_simulations():
    soma = traces(3)
    reference = [np.array([100.0, 300.0, 500.0]), np.array([200.0]), np.array([700.0, 800.0])]
    # simulation 0: all 0.25 ms late; simulation 1: 2 ms late; simulation 2: one spike missed, one extra
    setting = [reference[0] + 0.25, np.array([202.0]), np.array([700.0, 900.0])]
    figures = compare(soma, reference, [v + 0.1 for v in soma], setting)
    assert figures["reference_spikes"] == 6 and figures["paired_spikes"] == 5
    assert (figures["missed_spikes"], figures["extra_spikes"]) == (1, 1)
    assert figures["spike_fraction_within_1ms"] == pytest.approx(4 / 6)  # a missed spike is not within 1 ms
    assert figures["spike_shift_max_abs_ms"] == pytest.approx(2.0)
    assert figures["spike_shift_mean_signed_ms"] == pytest.approx((3 * 0.25 + 2.0 + 0.0) / 5)
    assert figures["soma_rmse_raw_median_mV"] == pytest.approx(0.1)
    assert figures["outlier_simulations"] == [
        {"simulation": 1, "reference_spikes": 1, "beyond_1ms": 1, "missed": 0, "extra": 0},
        {"simulation": 2, "reference_spikes": 2, "beyond_1ms": 1, "missed": 1, "extra": 1},
    ]
    assert meets_targets(figures) == {"soma_rmse_clipped_median_mV": False, "spike_fraction_within_1ms": False,
                                      "spike_shift_mean_abs_ms": False, "spike_shift_mean_signed_ms": False}


def test_a_setting_within_every_target_meets_them():
    soma = traces(2, seed=1)
    reference = [np.array([100.0, 400.0]), np.array([250.0])]
    figures = compare(soma, reference, [v + 0.01 for v in soma], [t + 0.05 for t in reference])
    assert figures["outlier_simulations"] == []
    assert all(meets_targets(figures).values())
    assert figures["spike_shift_mean_signed_ms"] <= TARGETS["spike_shift_mean_signed_ms"]


def test_compare_refuses_mismatched_inputs():
    with pytest.raises(ValueError):
        compare(traces(2), [np.zeros(0)] * 2, traces(1), [np.zeros(0)])


def test_pooled_sets_give_the_figures_of_their_union():
    """Two sets scored apart, pooled: the counts and mean shifts of scoring all their simulations at once."""
    rng = np.random.default_rng(3)
    reference_soma, reference_spikes, soma, spikes = [], [], [], []
    for _ in range(10):
        v = rng.normal(-67.0, 3.0, 1000)
        reference_soma.append(v)
        soma.append(v + rng.normal(0.0, 0.05 + rng.random(), 1000))
        t = np.sort(rng.choice(np.arange(10, 990), size=rng.integers(1, 8), replace=False)).astype(float)
        reference_spikes.append(t)
        moved = t + rng.choice([0.0, 0.125, -0.25, 1.5, 3.0], size=t.size)
        spikes.append(moved[rng.random(t.size) > 0.1])  # some missed
    whole = compare(reference_soma, reference_spikes, soma, spikes)
    first = compare(reference_soma[:4], reference_spikes[:4], soma[:4], spikes[:4])
    second = compare(reference_soma[4:], reference_spikes[4:], soma[4:], spikes[4:])
    pooled = pool([first, second])
    for key in ("simulations", "reference_spikes", "paired_spikes", "missed_spikes", "extra_spikes",
                "soma_rmse_clipped_max_mV", "spike_shift_max_abs_ms"):
        assert pooled[key] == whole[key], key
    for key in ("spike_fraction_within_1ms", "spike_shift_mean_abs_ms", "spike_shift_mean_signed_ms"):
        assert pooled[key] == pytest.approx(whole[key]), key
    assert whole["spike_fraction_within_1ms"] < 1.0 and whole["missed_spikes"] > 0  # the case is not trivial
    assert pooled["soma_rmse_clipped_median_mV"] >= whole["soma_rmse_clipped_median_mV"]
    assert pooled["soma_rmse_clipped_median_is_upper_bound"]
    assert pool([first])["soma_rmse_clipped_median_mV"] == first["soma_rmse_clipped_median_mV"]
