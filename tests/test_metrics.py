"""metrics.py: the metrics equal scikit-learn's, a one-class set gives NaN, and one rule decides the
threshold for every choice."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from metrics import compute_metrics


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = compute_metrics(y, p)
    assert m["acc"] == pytest.approx(accuracy_score(y, p > 0.5))
    assert m["ap"] == pytest.approx(average_precision_score(y, p))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["r_acc"] == pytest.approx(accuracy_score(y[y == 0], p[y == 0] > 0.5))
    assert m["f_acc"] == pytest.approx(accuracy_score(y[y == 1], p[y == 1] > 0.5))
    brute = max(accuracy_score(y, p >= t) for t in np.unique(p))
    assert m["best_acc"] == pytest.approx(brute)
    assert m["n_real"] == int((y == 0).sum()) and m["n_fake"] == int((y == 1).sum())


def test_metrics_one_class_is_nan_not_crash():
    m = compute_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert np.isnan(m["ap"]) and np.isnan(m["auc"]) and m["r_acc"] == pytest.approx(2 / 3)
    m = compute_metrics([1, 1, 1], [0.1, 0.7, 0.2])  # fakes only: AP would be 1 whatever the scores
    assert np.isnan(m["ap"]) and np.isnan(m["auc"]) and m["f_acc"] == pytest.approx(1 / 3)


def test_decide_threshold_is_one_rule_for_every_choice(tmp_path):
    from metrics import PAPER_THRESHOLD, decide_threshold
    from util import UserError
    assert decide_threshold("auto", 0.3) == (0.3, "stored by train.py: best balanced accuracy on its validation split",
                                             False)
    auto = decide_threshold("auto", None)
    assert auto.value == PAPER_THRESHOLD and auto.is_paper_rule and "stores no threshold" in auto.source
    assert decide_threshold("paper", 0.3).value == PAPER_THRESHOLD and decide_threshold("paper", 0.3).is_paper_rule
    assert decide_threshold("stored", 0.3).value == 0.3
    with pytest.raises(UserError, match="holds no threshold"):
        decide_threshold("stored", None)
    given = decide_threshold(0.7, 0.3, given_by="the page's slider")
    assert given == (0.7, "given with the page's slider", False)
    with pytest.raises(UserError, match="a probability or one of auto, stored, paper"):
        decide_threshold("sometimes", 0.3)
    # calibration wins: at most 25% of these four reals are called fake
    calibrated = decide_threshold("paper", 0.3, str(tmp_path), 0.25, lambda folder: [0.1, 0.2, float("nan"), 0.9, 0.4])
    assert calibrated.value == 0.4 and calibrated.source.startswith("calibrated on 4 real images")
