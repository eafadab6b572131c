"""Pages: a release's story rendered for people, as HTML and Markdown, from templates.

`rebuild.release.report.report_view` decides what the pages say (pure data, tested on its
own); the Jinja2 templates in rebuild/templates only lay it out. The HTML is autoescaped; a
missing value is an error, never an empty string. Kept apart from `report` so that commands
that print a story to the terminal (`rebuild show`) never load Jinja2.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_eval_context, select_autoescape
from jinja2.nodes import EvalContext
from markupsafe import Markup

from rebuild.release.report import Story, report_view


def render_markdown(story: Story) -> str:
    """The story as Markdown (deterministic), from templates/report.md.j2."""
    return _environment().get_template("report.md.j2").render(view=report_view(story))


def render_html(story: Story) -> str:
    """The story as one self-contained HTML page (deterministic), from
    templates/report.html.j2, every value escaped."""
    return _environment().get_template("report.html.j2").render(view=report_view(story))


def render_notes(notes: Mapping[str, Any], form: str) -> str:
    """Release notes (rebuild.release.notes) as Markdown or one self-contained HTML page."""
    return _environment().get_template(f"notes.{form}.j2").render(notes=notes)


def render_page(template: str, **context: Any) -> str:
    """Another page of rebuild/templates (the dashboard's), with the same autoescaping."""
    return _environment().get_template(template).render(**context)


def _md_cell(text: Any) -> str:
    """A Markdown table cell: pipes and line breaks would break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _badge_class(word: str) -> str:
    """The colour of a status word: ok, bad, or warn for anything not known to be either."""
    return ("ok" if word in ("PASSED", "ok", "verified", "reproducible", "same",
                             "covered") else
            "bad" if word in ("FAILED", "FAIL", "invalid", "not-reproducible", "failed",
                              "test-failed", "UNCOVERED") else "warn")


def _is_code_word(word: str) -> bool:
    """Digests, key ids and URIs are set in monospace."""
    return word.startswith(("sha256:", "https://")) or len(word) == 64


@pass_eval_context
def _escape(context: EvalContext, value: Any) -> Any:
    # Autoescaping with html.escape's entities (&quot; &#x27;) rather than MarkupSafe's
    # (&#34; &#39;): the pages keep the bytes they had before templates, so an exported
    # bundle of an unchanged release keeps its digest.
    if not context.autoescape or isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))  # noqa: S704 (escaped right here)


@cache
def _environment() -> Environment:
    """The templates in the package: HTML autoescaped, and a missing value is an error,
    never an empty string."""
    environment = Environment(
        loader=PackageLoader("rebuild", "templates"), undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                      disabled_extensions=("md.j2",), default=True),
        finalize=_escape, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(md_cell=_md_cell, badge_class=_badge_class)
    environment.tests["code_word"] = _is_code_word
    return environment
