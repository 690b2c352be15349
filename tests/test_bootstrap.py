"""bootstrap.py: its metrics under weights equal scikit-learn's, its accuracies' replicates are the
Beta distribution they claim, its intervals agree with scipy's bootstrap where both apply, and
they mean what they say: simulated test sets drawn from score distributions whose AP and ACC are
known are covered 90-98 % of the time. Edge cases, by hand."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import average_precision_score

import bootstrap as bs


@given(n=st.integers(2, 60), seed=st.integers(0, 10_000), ties=st.integers(1, 20), integer_weights=st.booleans())
def test_weighted_ap_is_scikit_learns_with_sample_weights(n, seed, ties, integer_weights):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    probs = rng.integers(0, ties, n) / ties  # few distinct scores: runs of ties
    weights = rng.integers(0, 4, (3, n)).astype(float) if integer_weights else rng.gamma(1.0, size=(3, n))
    weights[:, :2] += 1  # both classes keep some weight
    ours = bs.weighted_ap(labels, probs, weights)
    for w, a in zip(weights, ours):
        assert a == pytest.approx(average_precision_score(labels, probs, sample_weight=w), abs=1e-12)


def test_the_point_metrics_are_the_tables():
    from metrics import compute_metrics
    rng = np.random.default_rng(0)
    labels, probs = rng.integers(0, 2, 300), rng.random(300)
    ours, theirs = bs.metrics_of(labels, probs, 0.3), compute_metrics(labels, probs)
    for k in ("acc", "ap", "r_acc", "f_acc"):
        assert ours[k][0] == pytest.approx(100 * theirs[k], abs=1e-9)
    at = compute_metrics(labels, probs, 0.3)
    assert ours["acc_t"][0] == pytest.approx(100 * at["acc"], abs=1e-9)


@pytest.mark.parametrize("n, k", [(50, 50), (50, 47), (200, 100), (9, 0)])
def test_a_class_accuracys_replicates_are_its_jeffreys_beta(n, k):
    """With half a right and half a wrong pseudo-image, the weighted share of right images is
    Beta(k + 1/2, n - k + 1/2): its interval is Jeffreys' (within the Monte Carlo error of 20,000
    replicates), also at 100 %, where a classic bootstrap gives [100, 100]."""
    labels = np.zeros(n, dtype=int)
    probs = np.r_[np.full(k, 0.2), np.full(n - k, 0.8)]  # k reals called real
    reps = bs.replicates(bs.Generator.of(labels, probs, rng_key=("jeffreys", n, k)), 20_000)["r_acc"][0]
    lo, hi = bs.interval(reps)
    expected = 100 * stats.beta.ppf([0.025, 0.975], k + 0.5, n - k + 0.5)
    assert lo == pytest.approx(expected[0], abs=0.6) and hi == pytest.approx(expected[1], abs=0.6)


@pytest.mark.slow  # scipy's bootstrap, 1,000 scikit-learn APs
def test_ap_intervals_agree_with_scipys_bootstrap_where_both_apply():
    """With 1,000 images per class and an AP far from 100, the Bayesian and the classic bootstrap
    agree: scipy.stats.bootstrap (percentile, the classes resampled apart) over scikit-learn's AP."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(-0.8, 1, 1000), rng.normal(0.8, 1, 1000)

    def ap(r, f, axis=-1):
        return 100 * average_precision_score(np.r_[np.zeros(len(r)), np.ones(len(f))], np.r_[r, f])
    theirs = stats.bootstrap((real, fake), ap, vectorized=False, paired=False, n_resamples=1000, method="percentile",
                             rng=np.random.default_rng(2)).confidence_interval
    labels = np.r_[np.zeros(1000), np.ones(1000)]
    gen = bs.Generator.of(labels, 1 / (1 + np.exp(-np.r_[real, fake])), rng_key=("scipy",))
    lo, hi = bs.interval(bs.replicates(gen, 2000)["ap"][0])
    width = theirs.high - theirs.low
    assert abs(lo - theirs.low) < 0.15 * width and abs(hi - theirs.high) < 0.15 * width


# ----------------------------------------------------------------------------- coverage

def population(mu, fakes, threshold):
    """The metrics (%) of a population where a real image's logit is N(-mu/2, 1), a fake's
    N(mu/2, 1), and a share ``fakes`` of the images is fake: AP = the integral of precision over
    recall; accuracies at 0.5 and at ``threshold``."""
    z = np.linspace(-14, 14, 400_001)
    tpr, fpr = stats.norm.sf(z - mu / 2), stats.norm.sf(z + mu / 2)
    precision = fakes * tpr / np.maximum(fakes * tpr + (1 - fakes) * fpr, 1e-300)
    out = {"ap": 100 * np.sum(precision[::-1][1:] * np.diff(tpr[::-1]))}
    for suffix, t in (("", 0.5), ("_t", threshold)):
        logit = np.log(t / (1 - t))
        r, f = stats.norm.cdf(logit + mu / 2), stats.norm.sf(logit - mu / 2)
        out.update({"r_acc" + suffix: 100 * r, "f_acc" + suffix: 100 * f, "acc" + suffix: 100 * (fakes * f +
                                                                                              (1 - fakes) * r)})
    return out


def simulated(rng, n_real, n_fake, mu):
    labels = np.r_[np.zeros(n_real), np.ones(n_fake)].astype(int)
    logits = np.r_[rng.normal(-mu / 2, 1, n_real), rng.normal(mu / 2, 1, n_fake)]
    return labels, 1 / (1 + np.exp(-logits))


SETS, REPLICATES, THRESHOLD = 200, 400, 0.3
# (real images, fake images, separation): 50 to 2,000 images per class, 1:1 to 1:9 either way, AP
# from 67 to 99.8 and accuracies from 69 to 97 (a real accuracy of 93 % from 50 images included,
# where the classic bootstrap's intervals collapse whenever the 50 are all right). Any interval of
# a proportion covers with a probability that swings with n and p (Jeffreys' at n = 50 between 95
# and 99 % for p from 0.93 to 0.98, computed exactly): a class of 50 images at 97.7 % lands at 97.3 %,
# too near this test's 98 % ceiling for 200 sets.
CONFIGS = [(50, 50, 1.0), (50, 450, 2.0), (450, 50, 2.0), (50, 450, 3.0), (200, 1800, 3.0), (2000, 2000, 2.0)]


@pytest.mark.slow
@pytest.mark.parametrize("n_real, n_fake, mu", CONFIGS)
def test_the_intervals_cover_the_truth_95_percent_of_the_time(n_real, n_fake, mu):
    truth = population(mu, n_fake / (n_real + n_fake), THRESHOLD)
    rng = np.random.default_rng(12345)
    covered = dict.fromkeys(truth, 0)
    for s in range(SETS):
        labels, probs = simulated(rng, n_real, n_fake, mu)
        gen = bs.Generator.of(labels, probs, [THRESHOLD], rng_key=("coverage", s))
        reps, point = bs.replicates(gen, REPLICATES), bs.metrics_of(labels, probs, THRESHOLD)
        for k in truth:
            lo, hi = bs.metric_interval(k, reps[k][0], point[k][0], smaller_class=min(n_real, n_fake))
            covered[k] += lo <= truth[k] <= hi
    rates = {k: 100 * v / SETS for k, v in covered.items()}
    print(f"\ncoverage, {n_real} real : {n_fake} fake, AP {truth['ap']:.1f}, ACC {truth['acc']:.1f}: " +
          ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))  # docs/uncertainty.md (pytest -s)
    assert all(90 <= r <= 98 for r in rates.values()), rates


@pytest.mark.slow
def test_the_mean_rows_interval_covers_the_mean_of_the_truths():
    """A suite of three generators of other sizes and separations: the Mean row's interval, from
    the same replicates of every generator, covers the average of their population metrics."""
    from metrics import mean_row
    suite = [(100, 100, 1.5), (100, 300, 2.5), (300, 100, 3.0)]
    truths = [population(mu, nf / (nr + nf), THRESHOLD) for nr, nf, mu in suite]
    truth = {k: np.mean([t[k] for t in truths]) for k in truths[0]}
    rng = np.random.default_rng(7)
    covered = dict.fromkeys(truth, 0)
    for s in range(SETS):
        rows = []
        for g, (nr, nf, mu) in enumerate(suite):
            labels, probs = simulated(rng, nr, nf, mu)
            m = {k: float(v[0]) for k, v in bs.metrics_of(labels, probs, THRESHOLD).items()}
            rows.append({"suite": f"sim{s}", "generator": f"g{g}", "y_true": labels, "y_prob": probs,
                         "threshold": THRESHOLD, **m})
        mean = mean_row(rows, f"sim{s}")
        bs.add_intervals(rows, mean, REPLICATES)
        for k in truth:
            covered[k] += mean[k + "_lo"] <= truth[k] <= mean[k + "_hi"]
    rates = {k: 100 * v / SETS for k, v in covered.items()}
    print("\ncoverage of the Mean row: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    assert all(90 <= r <= 98 for r in rates.values()), rates


# ----------------------------------------------------------------------------- edge cases, by hand

def intervals_of(labels, probs, threshold=None):
    gen = bs.Generator.of(labels, probs, [threshold], rng_key=("edge",))
    reps, point = bs.replicates(gen, 2000), bs.metrics_of(np.asarray(labels), np.asarray(probs, float), threshold)
    smaller = min(np.sum(np.asarray(labels) == 0), np.sum(np.asarray(labels) == 1))
    return {k: (point[k][0], *bs.metric_interval(k, reps[k][0], point[k][0], smaller_class=smaller)) for k in reps}


def test_one_class_only_has_no_ap_and_no_accuracy_of_the_other_class():
    out = intervals_of([1] * 20, np.linspace(0.3, 0.9, 20))
    assert all(np.isnan(v) for v in out["ap"]) and all(np.isnan(v) for v in out["r_acc"])
    est, lo, hi = out["f_acc"]
    assert est == pytest.approx(100 * 13 / 20) and lo < est < hi  # 13 of 20 above 0.5
    assert out["acc"] == out["f_acc"]


def test_all_scores_tied():
    """AP of tied scores is the share of fakes, whatever the resample (the classes keep their sizes);
    every image gets the same call."""
    out = intervals_of([0] * 30 + [1] * 10, [0.7] * 40)
    assert out["ap"] == pytest.approx((25.0, 25.0, 25.0))
    assert out["r_acc"][0] == 0 and 0 < out["r_acc"][2] < 10 and out["f_acc"][0] == 100 and out["f_acc"][1] > 70


def test_perfect_separation():
    """No fake ranked below a real: AP is 100 in every resample of these images, so its interval is
    [100, 100] (what the images can say; docs/uncertainty.md); the accuracies keep a lower bound."""
    out = intervals_of([0] * 50 + [1] * 50, np.r_[np.linspace(0, 0.4, 50), np.linspace(0.6, 1, 50)])
    assert out["ap"] == (100.0, 100.0, 100.0)
    est, lo, hi = out["acc"]
    assert est == 100 and hi == pytest.approx(100, abs=0.05) and 96 < lo < 99.5


def test_a_generator_with_three_images():
    out = intervals_of([0, 1, 1], [0.2, 0.9, 0.4])
    assert out["ap"][0] == pytest.approx(100.0) and out["r_acc"][0] == 100.0 and out["f_acc"][0] == 50.0
    for k, (est, lo, hi) in out.items():
        assert lo <= est <= hi or k == "ap", k  # AP's bias correction may move it; all defined
    assert out["f_acc"][1] < 15 and out["f_acc"][2] > 85  # two images say little


# ----------------------------------------------------------------------------- comparisons

def test_a_detector_against_itself_differs_by_nothing():
    rng = np.random.default_rng(0)
    labels, probs = simulated(rng, 100, 100, 2.0)
    for delta, reps, a, b in bs.compare(labels, [probs], [probs], 500, 0, ("same",)).values():
        assert delta == 0 and a == b and np.all(reps == 0) and bs.p_value(reps) == 1.0


def test_a_clearly_better_detector_holds_after_holm_and_a_tiny_difference_does_not():
    rng = np.random.default_rng(3)
    shared = {}
    for g, gain in enumerate([2.0, 0.0, 0.0]):
        labels = np.r_[np.zeros(300), np.ones(300)].astype(int)
        base = np.r_[rng.normal(-0.5, 1, 300), rng.normal(0.5, 1, 300)]
        better = base + np.where(labels == 1, gain, -gain) + rng.normal(0, 0.05, 600)
        shared[("none", "S", f"g{g}")] = (labels, np.array([1 / (1 + np.exp(-base))]),
                                          np.array([1 / (1 + np.exp(-better))]), True, {})
    rows = bs.comparison_rows(shared, 1000, 0)
    assert [r["generator"] for r in rows] == ["g0", "g1", "g2", "Mean"]
    assert rows[0]["holds_ap"] and rows[0]["d_ap"] > 10 and rows[0]["d_ap_lo"] > 0
    assert not rows[1]["holds_ap"] and not rows[2]["holds_ap"] and rows[1]["d_ap_lo"] < 0 < rows[1]["d_ap_hi"]
    assert rows[0]["p_ap_holm"] >= rows[0]["p_ap"]


def test_holm_by_hand():
    assert list(bs.holm([0.01, 0.04, 0.03, float("nan")])[:3]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(bs.holm([0.01, 0.04, 0.03, float("nan")])[3])


def test_seeds_that_disagree_widen_the_interval_of_a_group_difference():
    """Two groups of three checkpoints: with seeds that vary as much as the detectors differ, the
    difference of the means is less certain than with seeds that agree."""
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(400), np.ones(400)].astype(int)
    base = np.r_[rng.normal(-0.7, 1, 400), rng.normal(0.7, 1, 400)]

    def group(shift, spread):
        return np.array([1 / (1 + np.exp(-(base * (1 + shift + s) + rng.normal(0, 0.3, 800))))
                         for s in (-spread, 0, spread)])
    widths = []
    for spread in (0.0, 0.6):
        out = bs.compare(labels, group(0, spread), group(0.3, spread), 1000, 0, ("seeds",))
        lo, hi = bs.interval(out["ap"][1])
        widths.append(hi - lo)
    assert widths[1] > 1.5 * widths[0]


def test_an_ap_near_100_keeps_every_replicate_below_100_and_a_tight_interval():
    """One fake scored below every real among 200 + 200 images (AP 99.75): stretched to the
    jackknife's spread on the percent scale, replicates passed 100 and the interval was
    [20.3, 100.0]; on the logit scale they stay inside (0, 100) and the interval near its AP."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    fake = rng.uniform(0.6, 1, 200)
    fake[0] = rng.uniform(0, 0.1)
    probs = np.r_[rng.uniform(0, 0.5, 200), fake]
    gen = bs.Generator.of(labels, [probs], rng_key=("suite", "gen"))
    reps = bs.replicates(gen, 1000)["ap"][0]
    ap = bs.metrics_of(labels, probs, None)["ap"][0]
    assert 99.5 < ap < 100 and ((reps > 0) & (reps < 100)).all()
    lo, hi = bs.metric_interval("ap", reps, ap, smaller_class=200)
    assert 95 < lo < ap < hi < 100

