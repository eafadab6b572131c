"""Security checks: hostile input is refused, and the source evaluates no code."""

import ast
import math
import pathlib

import pytest

import risk_score
from risk_score import InvalidInput, score

SOURCE = pathlib.Path(risk_score.__file__).parent


@pytest.mark.parametrize("value", ["60", "__import__('os')", None, math.nan, math.inf, True,
                                   [60], {"age": 60}])
def test_hostile_age_is_refused(record_property, value):
    record_property("requirement", "REQ-4")
    record_property("hazard", "HAZ-2")
    with pytest.raises(InvalidInput):
        score(value, 120, False, False)


def test_no_dynamic_evaluation_in_the_source(record_property):
    record_property("requirement", "REQ-6")
    record_property("hazard", "HAZ-2")
    banned = {"eval", "exec", "compile", "__import__"}
    for path in sorted(SOURCE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned, f"{path}:{node.lineno} calls {node.func.id}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "marshal", "shelve"} & set(names), f"{path}:{node.lineno}"
