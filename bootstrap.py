"""How wide the numbers are: 95 % intervals for the per-generator metrics and the Mean rows, and
paired comparisons of detectors scored on the same images.

The intervals come from a Bayesian bootstrap over images (Rubin 1981), within each class: a
replicate weighs the real images with Dirichlet(1, ..., 1) weights that sum to their number,
and the fake images likewise, so that every replicate keeps the test set's numbers of real and
fake images, as its design fixes them. The ACC-type metrics (ACC, real ACC, fake ACC and those
at the threshold t) add half a right and half a wrong pseudo-image per class (Jeffreys' prior),
which makes a class accuracy's replicates exactly Beta(k + 1/2, n - k + 1/2): the classic
bootstrap cannot move an accuracy of 100 % at all and its intervals then cover a true 97.7 %
in two sets of 50 images out of three (docs/uncertainty.md; tests/test_bootstrap.py). AP is
scikit-learn's step rule with the weights as sample weights (``weighted_ap``), from one sort of
the scores per detector. An accuracy's interval is the 2.5th and 97.5th percentile of its
replicates; AP's is normal on the logit scale, from its replicates' spread (or the grouped
jackknife's, where wider), which bends as AP does near 100 %.

A suite's Mean row averages the generators' metrics within each replicate; two detectors are
compared on the same replicates (``compare``), and groups of checkpoints (seeds) also weigh
their checkpoints with Dirichlet weights, so that a difference carries both sources of
variance: which images, and which seeds.
"""
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import t as t_dist

LEVEL = 0.95
RESAMPLES = 1000  # test.py --bootstrap
SEED = 0          # test.py --bootstrap_seed
CHUNK = 200       # replicates computed at a time: memory stays at CHUNK x images per detector
ACC_KEYS = ("acc", "r_acc", "f_acc")
KEYS = ACC_KEYS + ("ap",) + tuple(k + "_t" for k in ACC_KEYS)
LOGIT_EDGE = 1e-9  # AP's logit is taken within [1e-9, 1 - 1e-9]


@dataclass(frozen=True)
class Generator:
    """One generator's images as the detectors scored them: ``labels`` (0 real, 1 fake) and
    ``probs`` (detectors x images: P(fake) of each detector, the same images in the same order),
    the decision threshold t of each detector (None: no ACC@t), and the random stream of its
    replicates (``replicate_rng``)."""
    labels: np.ndarray
    probs: np.ndarray
    thresholds: tuple = ()
    rng_key: tuple = ()

    @classmethod
    def of(cls, labels, probs, thresholds=None, rng_key=()):
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        thresholds = tuple(thresholds) if thresholds is not None else (None,) * len(probs)
        return cls(np.asarray(labels, dtype=np.int64).ravel(), probs, thresholds, tuple(rng_key))


def replicate_rng(seed, key):
    """The random stream of one (suite, generator): its replicates do not depend on the order in
    which generators are evaluated, nor on which others are there."""
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode("utf-8", "surrogateescape"))])


def weighted_ap(labels, probs, weights):
    """Average precision (scikit-learn's ``average_precision_score`` with ``sample_weight``) of
    ``probs`` for each row of ``weights`` (replicates x images): one sort, cumulative sums."""
    order = np.argsort(-probs, kind="stable")
    s, fake, w = probs[order], labels[order] == 1, weights[:, order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last image of each run of equal scores
    tp = np.cumsum(np.where(fake, w, 0.0), axis=1)[:, ends]
    called = np.cumsum(w, axis=1)[:, ends]  # true and false positives
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, tp / called, 0.0)
        recall = tp / tp[:, -1:]
    return np.sum(np.diff(recall, axis=1, prepend=0.0) * precision, axis=1)


def draw_weights(rng, labels, n):
    """(image weights, pseudo-image weights) of ``n`` replicates: Gamma(1) per image (Dirichlet
    weights once normalised within a class) and Gamma(1/2) for a right and a wrong pseudo-image
    per class (n x 2 x 2: class, right / wrong)."""
    return rng.standard_gamma(1.0, size=(n, len(labels))), rng.standard_gamma(0.5, size=(n, 2, 2))


def metrics_of(labels, probs, threshold, weights=None, pseudo=None):
    """{metric: values in %} of one detector's ``probs``: on the images as they are (no
    ``weights``: one value each), or under each replicate's ``weights`` and ``pseudo``-image
    weights (``draw_weights``). ACC@t and friends only with a ``threshold``; a metric the images
    cannot define (AP, or a class accuracy, without that class) is NaN."""
    real, fake = labels == 0, labels == 1
    point = weights is None
    if point:
        weights, pseudo = np.ones((1, len(labels))), np.zeros((1, 2, 2))
    out = {}
    for suffix, t in (("", 0.5), ("_t", threshold)):
        if t is None:
            continue
        correct = np.where(fake, probs > t, probs <= t).astype(np.float64)
        acc = {}
        for cls, mask, key in ((0, real, "r_acc"), (1, fake, "f_acc")):
            w = weights[:, mask]
            right, total = w @ correct[mask] + pseudo[:, cls, 0], w.sum(axis=1) + pseudo[:, cls].sum(axis=1)
            acc[key] = 100 * right / total if mask.any() else np.full(len(weights), np.nan)
            out[key + suffix] = acc[key]
        n_real, n_fake = real.sum(), fake.sum()
        out["acc" + suffix] = (np.nan_to_num(acc["r_acc"]) * n_real + np.nan_to_num(acc["f_acc"]) * n_fake) / \
            max(n_real + n_fake, 1) if len(labels) else np.full(len(weights), np.nan)
    if real.any() and fake.any():
        w = weights.copy()
        for mask in (real, fake):  # Dirichlet weights that sum to the class's size: the classes keep their sizes
            w[:, mask] *= mask.sum() / w[:, mask].sum(axis=1, keepdims=True)
        out["ap"] = 100 * weighted_ap(labels, probs, w)
    else:
        out["ap"] = np.full(len(weights), np.nan)
    return out


def ap_logit(ap):
    """AP (%) on the logit scale, where its intervals are normal."""
    return logit(np.clip(np.asarray(ap) / 100, LOGIT_EDGE, 1 - LOGIT_EDGE))


def jackknife_sd(labels, probs, groups=20):
    """The standard deviation of AP (%) by the delete-a-group jackknife: each class dealt into
    ``groups`` groups, one left out at a time (the class keeping its size), the classes' parts
    added up."""
    var = 0.0
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        g = min(groups, len(idx))
        if g < 2:
            continue
        w = np.ones((g, len(labels)))
        for i in range(g):
            w[i, idx[i::g]] = 0.0
            w[i, idx] *= len(idx) / w[i, idx].sum()
        v = 100 * weighted_ap(labels, probs, w)
        var += (g - 1) / g * np.sum((v - v.mean()) ** 2)
    return float(np.sqrt(var))


def replicates(gen, n, seed=SEED):
    """{metric: (detectors, n)} values of ``gen``'s metrics in ``n`` replicates, the same
    replicates (images and pseudo-images weighed alike) for every detector: paired. A detector's
    AP replicates are stretched around its AP, on the logit scale (none passes 100), to the
    grouped jackknife's spread where that is wider (``jackknife_sd``): with few images of one
    class and an AP near 100, the bootstrap's spread falls short of AP's own by about a tenth
    (tests/test_bootstrap.py)."""
    rng = replicate_rng(seed, gen.rng_key)
    out = {}
    for start in range(0, n, CHUNK):
        weights, pseudo = draw_weights(rng, gen.labels, min(CHUNK, n - start))
        for d, (p, t) in enumerate(zip(gen.probs, gen.thresholds)):
            for k, v in metrics_of(gen.labels, p, t, weights, pseudo).items():
                out.setdefault(k, np.empty((len(gen.probs), n)))[d, start:start + len(v)] = v
    for d, p in enumerate(gen.probs):
        ap, spread = metrics_of(gen.labels, p, None)["ap"][0], np.std(out["ap"][d])
        stretch = jackknife_sd(gen.labels, p) / spread if np.isfinite(ap) and spread > 0 else 0.0
        if stretch > 1:  # on the logit scale: no replicate passes 100
            z = ap_logit(out["ap"][d])
            out["ap"][d] = 100 * expit(ap_logit(ap) + (z - ap_logit(ap)) * stretch)
    return out


def interval(values, level=LEVEL):
    """The equal-tailed ``level`` interval of replicate ``values`` (NaN, NaN where they are not
    all defined)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v) or not np.isfinite(v).all():
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def logit_interval(values, estimate, level=LEVEL, smaller_class=None):
    """``estimate`` plus and minus Student's t (``smaller_class`` - 1 degrees of freedom: the test
    set's smaller class) times the replicates' spread, on the logit scale of a percentage, which
    bends as AP does near 100 % (percentiles fall short there); an AP that no replicate moves
    (perfect separation, all scores tied) is its own interval."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v) or not np.isfinite(v).all() or not np.isfinite(estimate):
        return float("nan"), float("nan")
    scale = np.std(ap_logit(v))
    if scale == 0:
        return float(estimate), float(estimate)
    centre = ap_logit(estimate)
    df = smaller_class - 1 if smaller_class and smaller_class > 1 else np.inf  # inf: the normal z
    lo, hi = 100 * expit(centre + np.array([-1, 1]) * t_dist.ppf((1 + level) / 2, df) * scale)
    return float(lo), float(hi)


def metric_interval(key, values, estimate, level=LEVEL, smaller_class=None):
    """The interval of the metric ``key`` from its replicate ``values``: logit-normal for AP,
    percentiles for the accuracies (their Jeffreys pseudo-images centre them), which stretch to
    hold the estimate (an accuracy of 100 % gets the upper bound 100: Brown, Cai and DasGupta's
    rule for Jeffreys' interval). ``smaller_class``: see ``logit_interval``."""
    if key == "ap":
        return logit_interval(values, estimate, level, smaller_class)
    lo, hi = interval(values, level)
    return (min(lo, estimate), max(hi, estimate)) if np.isfinite(lo) and np.isfinite(estimate) else (lo, hi)


def add_intervals(rows, mean, n=RESAMPLES, seed=SEED):
    """Give the generator ``rows`` of one suite (``engine.evaluate_suite``'s, with ``y_true`` and
    ``y_prob``) and their ``mean`` row (``metrics.mean_row``) the bounds ``<metric>_lo`` and
    ``<metric>_hi`` of every metric they have, from ``n`` replicates (none with ``n`` 0). The Mean
    row's replicates average the same replicates of the generators it averages."""
    if n <= 0:
        return
    reps = []
    for r in rows:
        gen = Generator.of(r["y_true"], r["y_prob"], [r.get("threshold")], rng_key=(r["suite"], r["generator"]))
        reps.append({k: v[0] for k, v in replicates(gen, n, seed).items()})
        smaller = min(np.sum(gen.labels == 0), np.sum(gen.labels == 1))
        for k, v in reps[-1].items():
            if r.get(k) is not None:
                r[k + "_lo"], r[k + "_hi"] = metric_interval(k, v, r[k], smaller_class=smaller)
    for k in KEYS:
        averaged = [rep[k] for r, rep in zip(rows, reps)
                    if r.get("in_mean", True) and k in rep and r.get(k) is not None and np.isfinite(r[k])]
        if averaged and mean.get(k) is not None:
            mean[k + "_lo"], mean[k + "_hi"] = metric_interval(k, np.mean(averaged, axis=0), mean[k])


# ----------------------------------------------------------------------------- comparisons

COMPARED = ("ap", "acc")  # ΔAP and ΔACC (at the paper's 0.5)


def p_value(deltas):
    """Two-sided p-value of a difference of 0 from its replicates: twice the smaller tail, with
    the replicate count's +1 so that no p-value is 0."""
    d = np.asarray(deltas, dtype=np.float64)
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def holm(pvalues):
    """Holm's step-down adjustment of ``pvalues`` (NaN stays NaN): a family of tests, one per
    generator, keeps its error rate at the level, whatever their dependence."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


def seed_weights(rng, n, k):
    """(n, k) weights of the checkpoints of a group in each replicate: Dirichlet(1, ..., 1) over
    its k seeds (the Bayesian bootstrap over seeds), all 1 for a single checkpoint."""
    if k == 1:
        return np.ones((n, 1))
    g = rng.standard_gamma(1.0, size=(n, k))
    return g / g.sum(axis=1, keepdims=True)


def compare(labels, probs_a, probs_b, n=RESAMPLES, seed=SEED, rng_key=()):
    """{metric: (point difference B - A, replicates of it)} for ``COMPARED`` on one generator:
    ``probs_a`` / ``probs_b`` (checkpoints x images) score the same ``labels``; a group's value is
    the mean over its checkpoints, weighed per replicate by ``seed_weights``."""
    ka = len(probs_a)
    gen = Generator.of(labels, np.vstack([probs_a, probs_b]), rng_key=rng_key)
    reps = replicates(gen, n, seed)
    rng = replicate_rng(seed + 1, rng_key)
    wa, wb = seed_weights(rng, n, ka), seed_weights(rng, n, len(probs_b))
    out = {}
    for k in COMPARED:
        point = [metrics_of(gen.labels, p, None)[k][0] for p in gen.probs]
        delta = np.mean(point[ka:]) - np.mean(point[:ka])
        out[k] = (float(delta), np.sum(wb * reps[k][ka:].T, axis=1) - np.sum(wa * reps[k][:ka].T, axis=1),
                  float(np.mean(point[:ka])), float(np.mean(point[ka:])))
    return out


def comparison_rows(shared, n=RESAMPLES, seed=SEED, level=LEVEL):
    """One row per generator (and a Mean row per suite) comparing two groups of checkpoints.

    ``shared``: {(perturbation, suite, generator): (labels, probs_a, probs_b, in_mean, counts)} over
    the images both groups scored; ``counts`` says how many each side had. A row holds, for each
    of ``COMPARED``, the groups' values, the difference B - A with its interval and p-value, and
    whether it holds after Holm's adjustment over the generators (the Mean rows are not in that
    family)."""
    rows, by_suite = [], {}
    for (pert, suite, gen), (labels, pa, pb, in_mean, counts) in shared.items():
        result = compare(labels, pa, pb, n, seed, (suite, gen))
        row = {"perturbation": pert, "suite": suite, "generator": gen, "n_images": len(labels),
               "n_real": int(np.sum(np.asarray(labels) == 0)), "n_fake": int(np.sum(np.asarray(labels) == 1)),
               **counts}
        for k, (delta, reps, a, b) in result.items():
            row.update(describe_delta(k, delta, reps, a, b, level))
        rows.append(row)
        if in_mean and np.isfinite(row["d_ap"]):
            by_suite.setdefault((pert, suite), []).append(result)
    for k in COMPARED:  # Holm over the generators of each comparison table
        adjusted = holm([r[f"p_{k}"] for r in rows])
        for r, adj in zip(rows, adjusted):
            r[f"p_{k}_holm"] = float(adj)
            r[f"holds_{k}"] = bool(adj <= 1 - level)
    out = []
    for pert, suite in dict.fromkeys((r["perturbation"], r["suite"]) for r in rows):
        out += [r for r in rows if (r["perturbation"], r["suite"]) == (pert, suite)]
        results = by_suite.get((pert, suite), [])
        if len(results) > 1:
            mean = {"perturbation": pert, "suite": suite, "generator": "Mean",
                    "n_images": sum(r["n_images"] for r in out if r["suite"] == suite and r["generator"] != "Mean")}
            for k in COMPARED:
                mean.update(describe_delta(k, *(np.mean([res[k][i] for res in results], axis=0) for i in range(4)),
                                           level=level))
            out.append(mean)
    return out


def describe_delta(key, delta, reps, a, b, level=LEVEL):
    lo, hi = interval(reps, level=level)
    return {f"{key}_a": a, f"{key}_b": b, f"d_{key}": delta, f"d_{key}_lo": lo, f"d_{key}_hi": hi,
            f"p_{key}": p_value(reps) if np.isfinite(reps).all() else float("nan")}
