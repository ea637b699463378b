"""The monitor's pure statistics: live accuracy of a known case, PSI and KS."""

from __future__ import annotations

import pytest

from shared.monitor.statistics import ks_distance, live_accuracy, psi


def test_live_accuracy_of_a_small_known_case():
    pairs = [("pneumonia", "pneumonia"), ("pneumonia", "normal"), ("normal", "normal"), ("normal", "pneumonia")]
    pairs += [("pneumonia", "pneumonia")]
    entries = [{"label": truth, "predicted": said, "model_version": "3"} for truth, said in pairs]
    entries.append({"label": "normal", "predicted": "normal", "model_version": None})
    result = live_accuracy(entries)
    v3 = result["by_version"]["3"]
    assert v3["n"] == 5 and v3["confusion"] == {"tp": 2, "tn": 1, "fp": 1, "fn": 1}
    assert v3["accuracy"] == pytest.approx(3 / 5)
    assert v3["sensitivity"] == pytest.approx(2 / 3)
    assert v3["specificity"] == pytest.approx(1 / 2)
    assert v3["agreement"] == pytest.approx((0.6 - 13 / 25) / (1 - 13 / 25))  # Cohen's kappa
    unversioned = result["by_version"]["unversioned"]
    assert (unversioned["n"], unversioned["accuracy"], unversioned["sensitivity"]) == (1, 1.0, None)
    assert result["overall"]["n"] == 6 and result["overall"]["accuracy"] == pytest.approx(4 / 6)


def test_psi_and_ks_are_zero_for_identical_distributions_and_large_for_a_shift():
    reference = [5, 10, 20, 30, 20, 10, 5, 0, 0, 0]
    assert psi(reference, [2 * c for c in reference]) == pytest.approx(0.0, abs=1e-12)
    assert ks_distance(reference, reference) == 0.0
    shifted = [0, 0, 0, 5, 10, 20, 30, 20, 10, 5]
    assert psi(reference, shifted) > 1.0 and ks_distance(reference, shifted) > 0.5
    with pytest.raises(ValueError, match="bins"):
        psi(reference, shifted[:5])
