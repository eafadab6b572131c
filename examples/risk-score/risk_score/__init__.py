"""A patient risk score (README.md lists the requirements REQ-1 to REQ-6)."""

from __future__ import annotations

import json
import sys

__version__ = "1.0.0"

AGE_RANGE = (18, 110)  # years (REQ-4)
SYSTOLIC_RANGE = (70, 250)  # mmHg (REQ-4)
SMOKER_POINTS = 15  # REQ-3
DIABETES_POINTS = 12  # REQ-3


class InvalidInput(ValueError):
    """Input outside what the score is defined for (REQ-4)."""


def _number(name: str, value: object, bounds: tuple[int, int]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, not {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:  # NaN fails both comparisons
        raise InvalidInput(f"{name} = {value!r} is outside {bounds[0]} to {bounds[1]}")
    return float(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, not {value!r}")
    return value


def score(age: object, systolic: object, smoker: object, diabetic: object) -> int:
    """The risk score, 0 to 100 (REQ-1), monotonic in age and pressure (REQ-2)."""
    years = _number("age", age, AGE_RANGE)
    pressure = _number("systolic", systolic, SYSTOLIC_RANGE)
    points = (years - AGE_RANGE[0]) * 0.5 + (pressure - SYSTOLIC_RANGE[0]) * 0.2
    points += SMOKER_POINTS if _flag("smoker", smoker) else 0
    points += DIABETES_POINTS if _flag("diabetic", diabetic) else 0
    return max(0, min(100, int(points)))


def main(argv: list[str] | None = None) -> int:
    """`risk-score '{"age": 60, "systolic": 140, "smoker": false, "diabetic": true}'` (REQ-5)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        data = json.loads(args[0]) if args else None
        if not isinstance(data, dict):
            raise InvalidInput("pass one JSON object: age, systolic, smoker, diabetic")
        print(score(data.get("age"), data.get("systolic"), data.get("smoker"),
                    data.get("diabetic")))
    except (InvalidInput, json.JSONDecodeError) as exc:
        print(f"risk-score: {exc}", file=sys.stderr)
        return 2
    return 0
