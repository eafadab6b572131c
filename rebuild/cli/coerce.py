"""Turning command-line strings into the plain values rebuild's options take, without pydantic.

typer (0.29, pinned in requirements.lock) builds a pydantic TypeAdapter for every parameter
of the command being run, which costs `rebuild show` the import of pydantic and a schema per
option on every start (issue 18: `show` and `verify` under 200 ms). Most of rebuild's options
are a `str`, a `Path`, a flag or a list of them; for those this module converts the value the way
typer would (a path checked by typer's own `coerce_cli_path`), and leaves every other
annotation, and any value it does not expect, to typer's pydantic coercion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import typer.core
from typer._click import Context
from typer._coercion import RuntimeParam, TypeDescriptor
from typer._param_types import coerce_cli_path

if TYPE_CHECKING:
    from typer.core import _TyperParameter

_LEAVES = (str, Path, int, bool)


@dataclass(frozen=True)
class PlainParam(RuntimeParam):
    """A `str`, `Path`, `int` or `bool` parameter (or a list of them); anything unexpected
    (a number or a flag given as text) goes to typer's own coercion, built only then."""

    fallback: Callable[[], RuntimeParam] = field(compare=False)

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        leaf = _leaf(self.annotation)
        many = isinstance(value, list | tuple)
        items = list(value) if many else [value]
        out: list[Any] = []
        for item in items:
            if leaf is str and isinstance(item, str):
                out.append(item)
            elif leaf is Path and isinstance(item, str | Path):
                out.append(coerce_cli_path(Path(item), self.parameter_info, path_type=Path,
                                           param=param, ctx=ctx))
            elif leaf is int and type(item) is int and self._in_range(item):
                out.append(item)  # a default: typer hands it over as it is
            elif leaf is bool and isinstance(item, bool):
                out.append(item)
            else:
                return self.fallback()._coerce_value(value, param, ctx)
        return out if many else out[0]

    def _in_range(self, number: int) -> bool:
        low, high = self.parameter_info.min, self.parameter_info.max
        return (low is None or number >= low) and (high is None or number <= high)


def plain_param(descriptor: TypeDescriptor, build: Callable[[TypeDescriptor], RuntimeParam]
                ) -> RuntimeParam | None:
    """A PlainParam for `descriptor`, or None when typer's coercion must handle it."""
    info = descriptor.parameter_info
    leaf = _leaf(descriptor.annotation)
    path_type: Any = info.path_type
    if (descriptor.file_annotation is not None or info.parser is not None
            or leaf not in _LEAVES or (leaf is Path and path_type not in (None, Path))):
        return None
    return PlainParam(info, descriptor.annotation, fallback=lambda: build(descriptor))


def _leaf(annotation: Any) -> Any:
    """`X` of `list[X]`, else the annotation itself."""
    return get_args(annotation)[0] if get_origin(annotation) is list else annotation


def install() -> None:
    """Use PlainParam wherever it applies, for every command of this process."""
    core: Any = typer.core  # the name typer.core calls (`from ._coercion import ...`)
    build: Callable[[TypeDescriptor], RuntimeParam] = core.build_runtime_param

    def build_runtime_param(descriptor: TypeDescriptor) -> RuntimeParam:
        return plain_param(descriptor, build) or build(descriptor)

    core.build_runtime_param = build_runtime_param
