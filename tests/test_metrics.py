"""Spec section 7 metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import sklearn.metrics
import pytest

from simulation.errors import InputShapeError
from surrogate import metrics


# --------------------------------------------------------------------------- ROC

def test_roc_drops_collinear_points_as_sklearn():
    # scores in decreasing order with their labels:
    #   0.9:1  0.8:1  0.7:0  0.6:0  0.5:1  0.4:0      (3 positives, 3 negatives)
    # cumulative (FP, TP) at each distinct score: (0,1) (0,2) (1,2) (2,2) (2,3) (3,3)
    # (1,2) lies on the straight segment (0,2)-(2,2): zero second difference in FP and TP -> dropped.
    # with the origin prepended: FP 0 0 0 2 2 3 -> fpr 0 0 0 2/3 2/3 1; TP 0 1 2 2 3 3 -> tpr 0 1/3 2/3 2/3 1 1
    labels = np.array([0, 1, 0, 1, 1, 0], bool)
    scores = np.array([0.4, 0.5, 0.7, 0.8, 0.9, 0.6])
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, [0, 0, 0, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.6, 0.5, 0.4])
    # the full curve keeps the collinear point (fpr 1/3, tpr 2/3)
    fpr_all, tpr_all, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr_all, [0, 0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr_all, [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1])


def test_auc_is_trapezoid_area_and_mann_whitney():
    # same example: area = 2/3 * 2/3 (flat at tpr 2/3) + 1/3 * 1 = 7/9;
    # Mann-Whitney: 0.9 and 0.8 beat all 3 negatives, 0.5 beats 0.4 -> 7 of 9 pairs.
    labels = np.array([1, 1, 0, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    assert metrics.trapezoid_auc(fpr, tpr) == pytest.approx(7 / 9)


def test_roc_with_tied_scores():
    # 0.8 is shared by a positive and a negative: one threshold for both.
    # (FP, TP) at 0.8, 0.5, 0.2: (1,1) (1,2) (2,2) -> a corner each, nothing dropped.
    # fpr 0 1/2 1/2 1, tpr 0 1/2 1 1; area = 1/2 * 1/4 (diagonal) + 1/2 * 1 = 0.625
    # Mann-Whitney with ties counted 1/2: (1/2 + 1) + (0 + 1) = 2.5 of 4 pairs.
    labels = np.array([1, 0, 1, 0], bool)
    scores = np.array([0.8, 0.8, 0.5, 0.2], np.float32)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, [0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert thresholds[0] == np.inf and thresholds[1] == pytest.approx(0.8)
    assert metrics.trapezoid_auc(fpr, tpr) == pytest.approx(0.625)


def test_roc_of_a_single_class_is_nan_and_metrics_say_so():
    fpr, tpr, _ = metrics.roc_curve(np.zeros(5, bool), np.linspace(0, 1, 5))
    assert np.isnan(tpr).all() and not np.isnan(fpr).any()
    spike, _ = metrics.spike_metrics(np.zeros(5, bool), np.linspace(0, 1, 5))
    assert math.isnan(spike["auc"]) and math.isnan(spike["tp_at_fp"]["0.0025"])


# --------------------------------------------------------------------------- TP @ FP, AUC @ FP

def test_tp_at_fp_index_rule():
    # ROC of the first example: fpr 0 0 0 2/3 2/3 1, tpr 0 1/3 2/3 2/3 1 1
    labels = np.array([1, 1, 0, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    # f = 0.3: distances .3 .3 .3 .37 .37 .7 -> first closest is index 0 -> index 1 -> tpr 1/3
    # (had the collinear point (1/3, 2/3) been kept, it would be closest and give 2/3)
    assert metrics.tp_at_fp(fpr, tpr, 0.3) == pytest.approx(1 / 3)
    # f = 0.5: index 3 (first of the two points at 2/3) -> tpr 2/3
    assert metrics.tp_at_fp(fpr, tpr, 0.5) == pytest.approx(2 / 3)
    # f = 0.95: index 5 -> 1
    assert metrics.tp_at_fp(fpr, tpr, 0.95) == pytest.approx(1.0)


def test_auc_at_fp_mean_tpr_below_grid_index():
    # ROC (0,0) (1/2,1) (1,1): tpr = 2 fpr below 1/2.
    fpr, tpr = np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])
    # grid x_i = i / 19999; closest to 0.01 is i = 200 (0.01 * 19999 = 199.99);
    # mean over i = 0..199 of 2 i / 19999 = 2 * 99.5 / 19999 = 199 / 19999
    assert metrics.auc_at_fp(fpr, tpr, 0.01) == pytest.approx(199 / 19999, rel=1e-12)
    # f = 0 -> index 0 clamped to 1 -> mean of tpr(0) = 0 (not the NaN of an empty mean)
    assert metrics.auc_at_fp(fpr, tpr, 0.0) == 0.0
    # f = 1 -> index 19999: mean of tpr over i < 19999; tpr(x) = min(2x, 1), by the sum
    #   sum_{i<=9999} 2i/19999 = 9999*10000/19999, plus 9999 ones (i = 10000..19998)
    expected = (9999 * 10000 / 19999 + 9999) / 19999
    assert metrics.auc_at_fp(fpr, tpr, 1.0) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- soma

def test_soma_metrics_by_hand():
    # y = [0, 2], y_hat = [1, 1]: errors -1, +1 -> RMSE 1, MAE 1; Var(err) = 1 = Var(y) -> 0 %
    m = metrics.soma_metrics([0.0, 2.0], [1.0, 1.0])
    assert m == {"explained_variance_percent": 0.0, "rmse_mV": 1.0, "mae_mV": 1.0}
    # a constant offset costs RMSE but not explained variance: y_hat = y + 3
    m = metrics.soma_metrics([0.0, 1.0, 5.0], [3.0, 4.0, 8.0])
    assert m["explained_variance_percent"] == pytest.approx(100.0)
    assert m["rmse_mV"] == pytest.approx(3.0) and m["mae_mV"] == pytest.approx(3.0)


def test_alignment_rescales_to_target_mean_and_std():
    target = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    prediction = 2.0 * target + 5.0  # any positive affine map of the target aligns onto it exactly
    np.testing.assert_allclose(metrics.align_soma_prediction(prediction, target), target)
    # hand case: prediction [0, 2] (mean 1, std 1) onto target [10, 30] (mean 20, std 10) -> [10, 30]
    np.testing.assert_allclose(metrics.align_soma_prediction([0.0, 2.0], [10.0, 30.0]), [10.0, 30.0])


def test_filter_counts_spike_bins_over_full_duration():
    spikes = np.zeros((4, 30), bool)
    spikes[1, :24] = True       # 24 spike bins: kept (inclusive)
    spikes[2, :25] = True       # 25: dropped
    spikes[3, 0] = True         # 1 spike inside the ignored start: still counts, still kept
    np.testing.assert_array_equal(metrics.select_simulations(spikes), [True, True, False, True])


# --------------------------------------------------------------------------- the whole of section 7

def test_evaluate_predictions_hand_example():
    # 3 simulations x 6 bins, first 2 bins ignored, at most 1 spike bin per kept simulation.
    soma_true = np.array([
        [-70.0, -70.0, -67.7, -60.0, -50.0, -67.7],   # -50 is clipped to -55
        [-67.7, -67.7, -65.7, -65.7, -67.7, -67.7],
        [-67.7, -67.7, -67.7, -67.7, -67.7, -67.7],   # dropped: 2 spike bins
    ])
    spikes_true = np.zeros((3, 6), bool)
    spikes_true[0, 4] = True
    spikes_true[2, 2:4] = True
    spike_prob = np.array([
        [0.0, 0.0, 0.1, 0.2, 0.9, 0.3],
        [0.9, 0.9, 0.4, 0.1, 0.2, 0.1],   # the 0.9s sit in the ignored bins
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    soma_pred = soma_true + 1.0        # raw prediction 1 mV too high everywhere (before clipping)
    result = metrics.evaluate_predictions(soma_true, spikes_true, soma_pred, spike_prob,
                                          ignore_first_ms=2, max_spike_bins=1, fp_rates=(0.1,))
    assert (result["simulations"], result["simulations_kept"]) == (3, 2)
    assert (result["bins_evaluated"], result["spike_bins_evaluated"]) == (8, 1)
    # evaluated spike scores: 0.1 0.2 [0.9] 0.3 | 0.4 0.1 0.2 0.1 -> the one spike has the top score
    assert result["spike"]["auc"] == 1.0
    # (FP, TP) per distinct score 0.9 0.4 0.3 0.2 0.1: (0,1) (1,1) (2,1) (4,1) (7,1); (1,1) is collinear and dropped
    # -> fpr 0 0 2/7 4/7 1: f = 0.1 is closest to index 0 (first of two) -> index 1 -> tpr 1
    assert result["spike"]["tp_at_fp"]["0.1000"] == 1.0
    # raw soma: target (bias-subtracted, clipped) vs prediction + 67.7; errors on kept bins after 2 ms:
    #   sim 0: target 0, 7.7, 12.7 (clipped), 0 ; prediction 1, 8.7, 18.7, 1 -> errors -1 -1 -6 -1
    #   sim 1: target 2, 2, 0, 0 ; prediction 3, 3, 1, 1 -> errors -1 -1 -1 -1
    raw = result["soma"]["raw"]
    assert raw["mae_mV"] == pytest.approx((3 + 6 + 4) / 8)
    assert raw["rmse_mV"] == pytest.approx(np.sqrt((7 * 1 + 36) / 8))
    # aligned: computed over all 3 x 6 values before filtering, so it differs from raw
    assert result["soma"]["aligned"]["rmse_mV"] != pytest.approx(raw["rmse_mV"])


def test_alignment_uses_the_whole_array_before_filtering():
    rng = np.random.default_rng(0)
    soma_true = -70.0 + 3.0 * rng.standard_normal((3, 40))
    spikes_true = np.zeros((3, 40), bool)
    spikes_true[2, :30] = True          # third simulation is filtered out
    soma_pred = 0.5 * soma_true + 10.0  # affine in the truth (truth never reaches -55 here)
    assert soma_true.max() < -55
    soma_pred[2] += 20.0                # the dropped simulation shifts the statistics
    result = metrics.evaluate_predictions(soma_true, spikes_true, soma_pred, rng.random((3, 40)),
                                          ignore_first_ms=10)
    # by hand: align over all 3 simulations, then evaluate only the first two after 10 ms
    target = soma_true + 67.7
    raw = soma_pred + 67.7
    aligned = (raw - raw.mean()) / raw.std() * target.std() + target.mean()
    expected = np.sqrt(np.mean((target[:2, 10:] - aligned[:2, 10:]) ** 2))
    assert result["soma"]["aligned"]["rmse_mV"] == pytest.approx(expected)
    # aligning after the filter would have been exact (the kept part is affine in the truth)
    assert expected > 0.1


def test_evaluate_predictions_rejects_mismatched_shapes():
    with pytest.raises(InputShapeError):
        metrics.evaluate_predictions(np.zeros((2, 10)), np.zeros((2, 10), bool), np.zeros((2, 9)), np.zeros((2, 10)),
                                     ignore_first_ms=0)


def test_no_simulation_kept_gives_nan_not_an_error():
    spikes = np.ones((2, 50), bool)
    result = metrics.evaluate_predictions(np.zeros((2, 50)) - 70, spikes, np.zeros((2, 50)) - 70, np.zeros((2, 50)),
                                          ignore_first_ms=10)
    assert result["simulations_kept"] == 0 and math.isnan(result["spike"]["auc"])
    assert math.isnan(result["soma"]["aligned"]["rmse_mV"])


def test_paired_auc_difference_sees_a_better_model_and_no_difference_between_twins():
    rng = np.random.default_rng(0)
    spikes = rng.random((40, 700)) < 0.01
    good = spikes * 0.6 + rng.random(spikes.shape) * 0.5  # ranks most spike bins above most others
    poor = spikes * 0.1 + rng.random(spikes.shape) * 0.5
    result = metrics.paired_auc_difference(spikes, good, poor, ignore_first_ms=100, resamples=50)
    assert result["auc_a"] == pytest.approx(metrics.spike_metrics(spikes[:, 100:], good[:, 100:])[0]["auc"])
    assert result["difference"] == pytest.approx(result["auc_a"] - result["auc_b"]) and result["difference"] > 0.1
    low, high = result["interval_95"]
    assert 0 < low <= result["difference"] <= high and result["fraction_a_higher"] == 1.0
    assert result["simulations"] == 40 and result["spike_bins"] == int(spikes[:, 100:].sum())
    twins = metrics.paired_auc_difference(spikes, good, good, ignore_first_ms=100, resamples=20)
    assert twins["difference"] == 0 and twins["interval_95"] == [0.0, 0.0] and twins["fraction_a_higher"] == 0
    with pytest.raises(InputShapeError, match="one shape"):
        metrics.paired_auc_difference(spikes, good, poor[:, :-1])


def test_paired_soma_rmse_difference_is_evaluates_rmse_and_sees_the_closer_model():
    """The point estimates are evaluate_predictions' raw and aligned RMSEs (the alignment over every simulation
    and bin, the unkept simulation too); each resample's RMSE is the one of the resampled arrays; a model closer
    to the truth is lower in every resample; twins differ by nothing."""
    rng = np.random.default_rng(5)
    n, steps = 30, 800
    soma = -70 + np.cumsum(rng.normal(0, 0.4, (n, steps)), axis=1)  # mV, some bins above the -55 mV cap
    soma[3, 100:110] = -20.0
    spikes = rng.random((n, steps)) < 0.005
    spikes[7, :40] = True  # 40 spike bins: left out of the RMSE, inside the alignment
    close = soma + rng.normal(0, 0.5, soma.shape) + 1.0  # an offset the alignment removes
    far = 0.8 * soma + rng.normal(0, 1.5, soma.shape)
    result = metrics.paired_soma_rmse_difference(soma, spikes, close, far, ignore_first_ms=100, resamples=40)
    for model, key in ((close, "rmse_a_mV"), (far, "rmse_b_mV")):
        expected = metrics.evaluate_predictions(soma, spikes, model, np.zeros_like(soma), ignore_first_ms=100)["soma"]
        for kind in ("raw", "aligned"):
            assert result[kind][key] == pytest.approx(expected[kind]["rmse_mV"], rel=1e-9)
    assert result["simulations"] == n and result["simulations_kept"] == n - 1 and result["resamples"] == 40
    for kind in ("raw", "aligned"):
        low, high = result[kind]["interval_95_mV"]
        assert low <= result[kind]["difference_mV"] <= high < 0 and result[kind]["fraction_a_lower"] == 1.0

    rows = np.random.default_rng(0).integers(0, n, n)  # the first resample of seed 0, scored directly
    first = metrics.paired_soma_rmse_difference(soma, spikes, close, far, ignore_first_ms=100, resamples=1)
    direct = [metrics.evaluate_predictions(soma[rows], spikes[rows], m[rows], np.zeros((n, steps)), ignore_first_ms=100)
              ["soma"]["aligned"]["rmse_mV"] for m in (close, far)]
    assert first["aligned"]["interval_95_mV"][0] == pytest.approx(direct[0] - direct[1], rel=1e-9)

    twins = metrics.paired_soma_rmse_difference(soma, spikes, close, close, ignore_first_ms=100, resamples=10)
    assert twins["aligned"]["difference_mV"] == 0 and twins["aligned"]["interval_95_mV"] == [0.0, 0.0]
    with pytest.raises(InputShapeError, match="one shape"):
        metrics.paired_soma_rmse_difference(soma, spikes, close, far[:, :-1])


def test_the_auc_of_a_resample_from_pair_counts_is_sklearns_on_the_resampled_bins():
    """simulation_pair_wins: the bootstrap's AUCs, from pair counts between simulations, are roc_auc_score's on the
    concatenated resampled bins (ties included: scores rounded to 2 decimals), and the paired bootstrap gives what
    scoring every resample with roc_auc_score gives."""
    rng = np.random.default_rng(3)
    spikes = rng.random((12, 300)) < 0.02
    spikes[0, 5] = True
    scores = np.round(spikes * 0.3 + rng.random(spikes.shape) * 0.6, 2)
    other = np.round(spikes * 0.2 + rng.random(spikes.shape) * 0.6, 2)
    wins, positives, negatives = metrics.simulation_pair_wins(spikes, scores)
    for _ in range(5):
        rows = rng.integers(0, 12, 12)
        m = np.bincount(rows, minlength=12).astype(float)
        expected = sklearn.metrics.roc_auc_score(spikes[rows].ravel(), scores[rows].ravel())
        assert m @ wins @ m / ((m @ positives) * (m @ negatives)) == pytest.approx(expected, abs=1e-12)

    result = metrics.paired_auc_difference(spikes, scores, other, ignore_first_ms=0, max_spike_bins=300,
                                           resamples=30, seed=4)
    draw = np.random.default_rng(4)
    slow = []
    for _ in range(30):
        rows = draw.integers(0, 12, 12)
        target = spikes[rows].ravel()
        slow.append(sklearn.metrics.roc_auc_score(target, scores[rows].ravel())
                    - sklearn.metrics.roc_auc_score(target, other[rows].ravel()))
    assert result["interval_95"] == pytest.approx([np.percentile(slow, 2.5), np.percentile(slow, 97.5)], abs=1e-12)
    assert result["fraction_a_higher"] == np.mean(np.array(slow) > 0) and result["resamples"] == 30
