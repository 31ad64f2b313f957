"""Evaluation metrics of spec section 7 (the conventions of the ELM and NeuronIO evaluation code).

Spike channel: the ROC curve of the flattened binary target against the predicted
probability and its area, by scikit-learn (`roc_curve` with its defaults, `auc`), as the
published evaluations; the true-positive rate at a chosen false-positive rate and the mean
true-positive rate below it (spec 7.5).

Soma channel: explained variance, RMSE and MAE in mV on the voltage clipped at -55 mV
and shifted by +67.7 mV (spec 7.2), both for the raw prediction and for the post-hoc
aligned one (spec 7.3: z-score the prediction over the whole evaluated array and give
it the ground truth's mean and standard deviation).

Which bins count (spec 7.4): simulations with 0..24 spike bins over their full
duration, bins from 500 ms on.
"""

from __future__ import annotations

import warnings

import numpy as np
import sklearn.metrics
from sklearn.exceptions import UndefinedMetricWarning

from simulation.errors import InputShapeError

# spec 7.5: AUC @ FP interpolates the ROC onto this many equally spaced FPR values in [0, 1]
FPR_GRID_POINTS = 20_000
# spec 7.5: the false-positive rates of the final evaluation
DEFAULT_FP_RATES = (0.0025, 0.01)


# --------------------------------------------------------------------------- spike channel

def roc_curve(spike_target: np.ndarray, spike_probability: np.ndarray,
              drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of a binary target against scores: sklearn.metrics.roc_curve on flattened arrays.

    With drop_intermediate (sklearn's default, as published) collinear points are dropped;
    they never change the area, but TP @ FP picks its index among the remaining points, so
    this matters (spec 7.5). A target without negatives (positives) gives an all-NaN fpr
    (tpr), as sklearn, without its warning: the metrics report such values as NaN.
    """
    labels = np.asarray(spike_target).ravel().astype(bool)
    scores = np.asarray(spike_probability).ravel()
    if labels.shape != scores.shape:
        raise InputShapeError(f"spike target has {labels.size} values but the prediction has {scores.size}")
    if labels.size == 0:
        raise InputShapeError("cannot compute a ROC curve of zero samples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class only: NaN rates, reported as NaN
        return sklearn.metrics.roc_curve(labels, scores, drop_intermediate=drop_intermediate)


def trapezoid_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule (sklearn.metrics.auc)."""
    return float(sklearn.metrics.auc(fpr, tpr))


def tp_at_fp(fpr: np.ndarray, tpr: np.ndarray, fp_rate: float) -> float:
    """TPR at the ROC point whose FPR is closest to fp_rate; index 0 (the prepended origin) becomes 1 (spec 7.5)."""
    index = int(np.argmin(np.abs(fpr - fp_rate)))  # first of equally close points, as np.argmin
    if index == 0:
        index = 1
    return float(tpr[index])


def auc_at_fp(fpr: np.ndarray, tpr: np.ndarray, fp_rate: float, grid_points: int = FPR_GRID_POINTS) -> float:
    """Mean TPR over the FPR grid below fp_rate: the partial AUC up to fp_rate divided by fp_rate (spec 7.5).

    The ROC is interpolated linearly onto `grid_points` equally spaced FPR values in [0, 1];
    the mean runs over grid indices below the one closest to fp_rate, clamped to [1, grid_points - 1].
    """
    fpr_grid = np.linspace(0.0, 1.0, num=grid_points)
    tpr_grid = np.interp(fpr_grid, fpr, tpr)
    index = min(max(1, int(np.argmin(np.abs(fpr_grid - fp_rate)))), grid_points - 1)
    return float(tpr_grid[:index].mean())


def fp_label(fp_rate: float) -> str:
    """Key of a false-positive rate in result dicts, e.g. 0.0025 -> "0.0025", 0.01 -> "0.0100" (as the published JSON)."""
    return f"{fp_rate:.4f}"


def spike_metrics(spike_target: np.ndarray, spike_probability: np.ndarray,
                  fp_rates=DEFAULT_FP_RATES) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """AUC, TP @ FP and AUC @ FP of flattened arrays; returns (metrics, (fpr, tpr)).

    Undefined values (no spike or no non-spike bin among the evaluated ones) are NaN.
    """
    fpr, tpr, _ = roc_curve(spike_target, spike_probability)
    defined = not (np.isnan(fpr).any() or np.isnan(tpr).any())
    nan = float("nan")
    metrics = {
        "auc": trapezoid_auc(fpr, tpr) if defined else nan,
        "tp_at_fp": {fp_label(f): tp_at_fp(fpr, tpr, f) if defined else nan for f in fp_rates},
        "auc_at_fp": {fp_label(f): auc_at_fp(fpr, tpr, f) if defined else nan for f in fp_rates},
    }
    return metrics, (fpr, tpr)


# --------------------------------------------------------------------------- soma channel

def soma_metrics(soma_target: np.ndarray, soma_prediction: np.ndarray) -> dict:
    """Explained variance (%), RMSE and MAE (mV) of flattened arrays (spec 7.5; sklearn's definitions)."""
    y = np.asarray(soma_target, dtype=np.float64).ravel()
    y_hat = np.asarray(soma_prediction, dtype=np.float64).ravel()
    error = y - y_hat
    variance = y.var()
    return {
        "explained_variance_percent": float(100.0 * (1.0 - error.var() / variance)) if variance > 0 else float("nan"),
        "rmse_mV": float(np.sqrt(np.mean(error ** 2))),
        "mae_mV": float(np.mean(np.abs(error))),
    }


def align_soma_prediction(soma_prediction: np.ndarray, soma_target: np.ndarray) -> np.ndarray:
    """Spec 7.3: z-score the prediction over the whole array, then give it the target's mean and std.

    Both statistics run over every simulation and time bin passed in (the evaluation
    applies this before filtering simulations and before dropping the first 500 ms).
    """
    prediction = np.asarray(soma_prediction, dtype=np.float64)
    target = np.asarray(soma_target, dtype=np.float64)
    spread = prediction.std()
    if spread == 0:  # a constant prediction has no shape to rescale; give it the target's mean
        return np.full_like(prediction, target.mean())
    return (prediction - prediction.mean()) / spread * target.std() + target.mean()


def soma_target_from_voltage(soma_voltage_mV: np.ndarray, cap_mV: float = -55.0, bias_mV: float = -67.7) -> np.ndarray:
    """Spec 7.2 at evaluation: clip the soma voltage from above at cap_mV, subtract the bias (no scale)."""
    return np.minimum(np.asarray(soma_voltage_mV, dtype=np.float64), cap_mV) - bias_mV


def require_scored_bins(ignore_first_ms: int, duration_ms: int) -> None:
    """Spec 7.4 skips the first ignore_first_ms bins of each simulation: some must remain."""
    if not 0 <= ignore_first_ms < duration_ms:
        raise InputShapeError(f"ignore_first_ms = {ignore_first_ms} leaves no bins of simulations {duration_ms} ms long")


def select_simulations(spike_target: np.ndarray, min_spike_bins: int = 0, max_spike_bins: int = 24) -> np.ndarray:
    """Spec 7.4: keep simulations whose spike-bin count over the full duration lies in [min, max]."""
    counts = np.asarray(spike_target).astype(bool).sum(axis=1)
    return (counts >= min_spike_bins) & (counts <= max_spike_bins)


# --------------------------------------------------------------------------- two models on the same test bins

def simulation_pair_wins(spikes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney counts between simulations: wins[s, t] is the number of pairs (spike bin of simulation s,
    spike-free bin of simulation t) in which the spike bin scores higher, ties counting one half.

    With P and N each simulation's spike and spike-free bin counts, the AUC of any multiset of the
    simulations (simulation s taken m_s times) is m' wins m / ((m' P) (m' N)): the AUC is the
    fraction of (positive, negative) pairs ordered correctly (Mann & Whitney 1947; Hanley & McNeil
    1982), which is what roc_auc_score's trapezoids add up to.
    """
    n = len(spikes)
    spike_scores, spike_simulation = scores[spikes], np.nonzero(spikes)[0]
    wins = np.zeros((n, n))
    for t in range(n):
        negatives = np.sort(scores[t][~spikes[t]])
        below = np.searchsorted(negatives, spike_scores, side="left")
        ties = np.searchsorted(negatives, spike_scores, side="right") - below
        wins[:, t] = np.bincount(spike_simulation, weights=below + 0.5 * ties, minlength=n)
    return wins, spikes.sum(axis=1).astype(float), (~spikes).sum(axis=1).astype(float)


def bootstrap_counts(simulations: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, simulations): how many times each simulation is drawn in each bootstrap resample
    (with replacement, as many draws as simulations), seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, simulations, simulations), minlength=simulations)
                     for _ in range(resamples)]).astype(float)


def paired_auc_difference(spikes_true: np.ndarray, spike_prob_a: np.ndarray, spike_prob_b: np.ndarray,
                          ignore_first_ms: int = 500, max_spike_bins: int = 24, resamples: int = 200,
                          seed: int = 0) -> dict:
    """AUC of model a minus AUC of model b on the same simulations, with a bootstrap over simulations.

    Arrays (n, T) as in evaluate_predictions, scored on the same bins (spec 7.4: the kept
    simulations, bins from ignore_first_ms on). The simulations are resampled with replacement
    `resamples` times and both models scored on each resample, so the interval holds the test
    set's own variation (which simulations happen to be in it) but not the models' (their
    training seeds). Returns both AUCs, their difference, the 2.5 / 97.5 percentiles of the
    resampled difference and the fraction of resamples in which a scores higher than b.
    """
    spikes = np.asarray(spikes_true).astype(bool)
    a, b = np.asarray(spike_prob_a), np.asarray(spike_prob_b)
    if not (spikes.ndim == 2 and a.shape == spikes.shape and b.shape == spikes.shape):
        raise InputShapeError(f"spikes {spikes.shape}, a {a.shape}, b {b.shape}: expected three (simulations, time) "
                              "arrays of one shape")
    kept = np.flatnonzero(select_simulations(spikes, 0, max_spike_bins))
    spikes, a, b = (x[kept, ignore_first_ms:] for x in (spikes, a, b))
    if not spikes.any() or spikes.all():
        raise InputShapeError("the kept test bins hold only one class: no AUC to compare")

    auc_a = sklearn.metrics.roc_auc_score(spikes.ravel(), a.ravel())
    auc_b = sklearn.metrics.roc_auc_score(spikes.ravel(), b.ravel())
    # A resample takes simulation s m_s times; its AUC follows from per-simulation pair counts, so each
    # resample costs a quadratic form over simulations instead of a sort of all its bins (simulation_pair_wins).
    wins_a, positives, negatives = simulation_pair_wins(spikes, a)
    wins_b, _, _ = simulation_pair_wins(spikes, b)
    counts = bootstrap_counts(len(kept), resamples, seed)
    pairs = (counts @ positives) * (counts @ negatives)
    both_classes = pairs > 0
    counts, pairs = counts[both_classes], pairs[both_classes]
    differences = np.einsum("rs,st,rt->r", counts, wins_a - wins_b, counts) / pairs
    used = len(differences)
    if not used:  # every resample held one class only
        differences = np.array([np.nan])
    return {
        "auc_a": float(auc_a), "auc_b": float(auc_b), "difference": float(auc_a - auc_b),
        "interval_95": [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))],
        "fraction_a_higher": float(np.mean(differences > 0)),
        "resamples": used, "simulations": int(len(kept)), "spike_bins": int(spikes.sum()),
    }


def _soma_sums(soma_target: np.ndarray, soma_raw: np.ndarray, window: np.ndarray, ignore_first_ms: int) -> np.ndarray:
    """Per simulation (rows), the sums that make both soma RMSEs of any reweighting of the simulations:
    over all bins n, sum p, sum p^2, sum y, sum y^2 (the alignment's statistics, spec 7.3), and over the
    scored bins (a kept simulation's bins from ignore_first_ms on, spec 7.4) the same five and sum p*y."""
    p, y = soma_raw, soma_target
    ps, ys = p[:, ignore_first_ms:] * window[:, None], y[:, ignore_first_ms:] * window[:, None]
    scored = window * (p.shape[1] - ignore_first_ms)
    return np.stack([np.full(len(p), p.shape[1], float), p.sum(1), (p * p).sum(1), y.sum(1), (y * y).sum(1),
                     scored.astype(float), ps.sum(1), (ps * ps).sum(1), ys.sum(1), (ys * ys).sum(1),
                     (ps * ys).sum(1)], axis=1)


def _soma_rmses(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw and aligned soma RMSE from _soma_sums totals (rows: reweightings). The aligned prediction is
    a * p + b with a = std(y) / std(p) and b = mean(y) - a * mean(p) over all bins (align_soma_prediction)."""
    n, sp, spp, sy, syy, m, wp, wpp, wy, wyy, wpy = totals.T
    mean_p, mean_y = sp / n, sy / n
    std_p = np.sqrt(np.maximum(spp / n - mean_p ** 2, 0.0))
    std_y = np.sqrt(np.maximum(syy / n - mean_y ** 2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(std_p > 0, std_y / std_p, 0.0)  # a constant prediction becomes the target's mean
    b = mean_y - a * mean_p
    aligned = (a * a * wpp + b * b * m + wyy + 2 * a * b * wp - 2 * a * wpy - 2 * b * wy) / m
    raw = (wpp - 2 * wpy + wyy) / m
    return np.sqrt(np.maximum(raw, 0.0)), np.sqrt(np.maximum(aligned, 0.0))


def paired_soma_rmse_difference(soma_true_mV: np.ndarray, spikes_true: np.ndarray, soma_pred_a_mV: np.ndarray,
                                soma_pred_b_mV: np.ndarray, ignore_first_ms: int = 500, max_spike_bins: int = 24,
                                soma_cap_mV: float = -55.0, soma_bias_mV: float = -67.7, resamples: int = 200,
                                seed: int = 0) -> dict:
    """Soma RMSE (mV) of model a minus that of model b on the same simulations, raw and aligned, with a
    bootstrap over simulations (the companion of paired_auc_difference).

    Arrays (n, T) as in evaluate_predictions, whose steps it follows: the alignment (spec 7.3) over every
    simulation and bin of the (resampled) set, the RMSE over the kept simulations' bins from
    ignore_first_ms on (7.4). Every simulation is resampled, the unkept ones too, since they enter the
    alignment; with each simulation once the two RMSEs are evaluate_predictions' own. Returns both models'
    RMSEs, their difference, the 2.5 / 97.5 percentiles of the resampled difference and the fraction of
    resamples in which a's RMSE is the lower, for "raw" and "aligned".
    """
    arrays = [np.asarray(x) for x in (soma_true_mV, spikes_true, soma_pred_a_mV, soma_pred_b_mV)]
    if not (arrays[0].ndim == 2 and all(x.shape == arrays[0].shape for x in arrays)):
        raise InputShapeError(f"soma {arrays[0].shape}, spikes {arrays[1].shape}, a {arrays[2].shape}, "
                              f"b {arrays[3].shape}: expected four (simulations, time) arrays of one shape")
    require_scored_bins(ignore_first_ms, arrays[0].shape[1])
    target = soma_target_from_voltage(arrays[0], soma_cap_mV, soma_bias_mV)
    window = select_simulations(arrays[1].astype(bool), 0, max_spike_bins).astype(float)
    if not window.any():
        raise InputShapeError(f"no simulation has at most {max_spike_bins} spike bins: no soma RMSE to compare")
    sums = [_soma_sums(target, x.astype(np.float64) - soma_bias_mV, window, ignore_first_ms) for x in arrays[2:]]
    count = len(window)
    weights = np.vstack([np.ones(count), bootstrap_counts(count, resamples, seed)])  # row 0: the test set itself
    weights = weights[weights @ window > 0]  # a resample must hold a scored simulation (the first row does)
    (raw_a, aligned_a), (raw_b, aligned_b) = (_soma_rmses(weights @ s) for s in sums)
    result = {"resamples": int(len(weights) - 1), "simulations": int(count), "simulations_kept": int(window.sum())}
    for name, a, b in (("raw", raw_a, raw_b), ("aligned", aligned_a, aligned_b)):
        differences = (a - b)[1:] if len(a) > 1 else np.array([np.nan])
        result[name] = {"rmse_a_mV": float(a[0]), "rmse_b_mV": float(b[0]), "difference_mV": float(a[0] - b[0]),
                        "interval_95_mV": [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))],
                        "fraction_a_lower": float(np.mean(differences < 0))}
    return result


# --------------------------------------------------------------------------- all of section 7

def evaluate_predictions(soma_true_mV: np.ndarray, spikes_true: np.ndarray,
                         soma_pred_mV: np.ndarray, spike_prob: np.ndarray,
                         ignore_first_ms: int = 500, max_spike_bins: int = 24,
                         fp_rates=DEFAULT_FP_RATES, soma_cap_mV: float = -55.0, soma_bias_mV: float = -67.7,
                         return_roc: bool = False):
    """All section-7 metrics of one evaluated set of simulations (arrays (n, T), 1-ms bins).

    soma_true_mV: simulated soma voltage (mV, unclipped); spikes_true: bool spike bins;
    soma_pred_mV: predicted soma voltage (mV); spike_prob: predicted spike probability.
    Steps, in the published order: ground truth clipped at soma_cap_mV and both traces
    shifted by -soma_bias_mV (7.2); the aligned prediction computed over the whole array
    (7.3); then only simulations with <= max_spike_bins spike bins and only bins from
    ignore_first_ms on (7.4); metrics on the flattened result (7.5). Soma metrics come
    both "raw" (the model's own voltage) and "aligned" (as published).

    Returns a JSON-ready dict; with return_roc also the (fpr, tpr) arrays of the ROC.
    """
    arrays = {name: np.asarray(a) for name, a in (("soma_true_mV", soma_true_mV), ("spikes_true", spikes_true),
                                                  ("soma_pred_mV", soma_pred_mV), ("spike_prob", spike_prob))}
    shape = arrays["soma_true_mV"].shape
    for name, a in arrays.items():
        if a.ndim != 2 or a.shape != shape:
            raise InputShapeError(f"{name} has shape {a.shape}; expected (simulations, time) = {shape}, the same for all four arrays")
    require_scored_bins(ignore_first_ms, shape[1])

    spikes = arrays["spikes_true"].astype(bool)
    soma_target = soma_target_from_voltage(arrays["soma_true_mV"], soma_cap_mV, soma_bias_mV)
    soma_raw = arrays["soma_pred_mV"].astype(np.float64) - soma_bias_mV
    soma_aligned = align_soma_prediction(soma_raw, soma_target)

    kept = select_simulations(spikes, 0, max_spike_bins)
    window = (kept, slice(ignore_first_ms, None))
    result = {
        "simulations": int(shape[0]),
        "simulations_kept": int(kept.sum()),
        "duration_ms": int(shape[1]),
        "ignore_first_ms": int(ignore_first_ms),
        "max_spike_bins": int(max_spike_bins),
        "bins_evaluated": int(kept.sum() * (shape[1] - ignore_first_ms)),
        "spike_bins_evaluated": int(spikes[window].sum()),
    }
    if not kept.any():
        nan = float("nan")
        spike = {"auc": nan, "tp_at_fp": {fp_label(f): nan for f in fp_rates},
                 "auc_at_fp": {fp_label(f): nan for f in fp_rates}}
        soma_nan = {"explained_variance_percent": nan, "rmse_mV": nan, "mae_mV": nan}
        result.update(spike=spike, soma={"raw": soma_nan, "aligned": dict(soma_nan)})
        roc = (np.array([np.nan]), np.array([np.nan]))
    else:
        spike, roc = spike_metrics(spikes[window], np.asarray(arrays["spike_prob"])[window], fp_rates)
        result["spike"] = spike
        result["soma"] = {
            "raw": soma_metrics(soma_target[window], soma_raw[window]),
            "aligned": soma_metrics(soma_target[window], soma_aligned[window]),
        }
    return (result, roc) if return_roc else result


# --------------------------------------------------------------------------- classification (long-horizon tasks)

def classification_metrics(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy with its 95 % Wilson interval (scipy's binomtest), each class's recall and the confusion matrix
    (sklearn; rows: true class, columns: predicted) of one classifier on a test split."""
    import scipy.stats

    predicted, labels = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
    if predicted.shape != labels.shape or labels.size == 0:
        raise InputShapeError(f"need as many predictions as labels, at least one: {predicted.shape} vs {labels.shape}")
    correct = int((predicted == labels).sum())
    interval = scipy.stats.binomtest(correct, labels.size).proportion_ci(0.95, method="wilson")
    confusion = sklearn.metrics.confusion_matrix(labels, predicted, labels=np.arange(num_classes))
    support = confusion.sum(axis=1)
    return {"accuracy": correct / labels.size, "examples": int(labels.size), "correct": correct,
            "accuracy_ci95": [float(interval.low), float(interval.high)],
            "class_recall": [float(confusion[c, c] / support[c]) if support[c] else None for c in range(num_classes)],
            "class_support": support.tolist(), "confusion_matrix": confusion.tolist()}


def paired_accuracy_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Two classifiers on the same examples: accuracy of a minus b and McNemar's exact test, i.e. a two-sided
    binomial test of the examples only one of them gets right (scipy's binomtest at p = 1/2)."""
    import scipy.stats

    correct_a, correct_b = np.asarray(correct_a, bool).ravel(), np.asarray(correct_b, bool).ravel()
    if correct_a.shape != correct_b.shape or correct_a.size == 0:
        raise InputShapeError(f"need the same examples for both classifiers: {correct_a.shape} vs {correct_b.shape}")
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((correct_b & ~correct_a).sum())
    p_value = scipy.stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"accuracy_difference": (only_a - only_b) / correct_a.size, "only_a_correct": only_a,
            "only_b_correct": only_b, "mcnemar_p_value": float(p_value)}
