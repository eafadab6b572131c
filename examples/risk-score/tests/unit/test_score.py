"""Unit tests of the calculation, from the source tree; each names its requirement ids."""

import pytest

from risk_score import DIABETES_POINTS, SMOKER_POINTS, InvalidInput, score


def test_score_is_between_0_and_100(record_property):
    record_property("requirement", "REQ-1")
    record_property("hazard", "HAZ-1")
    for age in (18, 50, 110):
        for systolic in (70, 140, 250):
            value = score(age, systolic, True, True)
            assert isinstance(value, int) and 0 <= value <= 100


def test_score_grows_with_age_and_pressure(record_property):
    record_property("requirement", "REQ-2")
    record_property("hazard", "HAZ-1")
    ages = [score(age, 130, False, False) for age in range(18, 111)]
    assert ages == sorted(ages)
    pressures = [score(60, p, False, False) for p in range(70, 251)]
    assert pressures == sorted(pressures)


def test_smoking_and_diabetes_add_fixed_points(record_property):
    record_property("requirement", "REQ-3")
    base = score(40, 120, False, False)
    assert score(40, 120, True, False) - base == SMOKER_POINTS
    assert score(40, 120, False, True) - base == DIABETES_POINTS


@pytest.mark.parametrize("age", [17, 111, -1])
def test_out_of_range_age_is_refused(record_property, age):
    record_property("requirement", "REQ-4")
    with pytest.raises(InvalidInput, match="age"):
        score(age, 120, False, False)
