"""mkdocs hook: the config reference page is generated from the schema at build time.

A page holding the line ``<!-- config-reference -->`` gets it replaced by one table per
section of :class:`evoplastic.config.Config`: every field, its type, its default and the
section's docstring, so the reference cannot fall behind the code. ``tests/test_docs.py``
checks that every field is in the generated text.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

MARKER = "<!-- config-reference -->"


def _type(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    return f"`{value!r}`".replace("|", "\\|")


def sections():
    """``(path, dataclass)`` of the top level and of every nested section, in order."""
    from evoplastic.config import Config

    out = [("top level", Config)]

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                path = f"{prefix}{f.name}"
                out.append((path, hints[f.name]))
                walk(hints[f.name], path + ".")

    walk(Config, "")
    return out


def reference() -> str:
    """Markdown: one table per section."""
    parts = []
    for path, cls in sections():
        hints = typing.get_type_hints(cls)
        parts.append(f"## `{path}`\n" if path != "top level" else "## Top level\n")
        doc = inspect.getdoc(cls) or ""
        if doc and not doc.startswith(cls.__name__ + "("):
            parts.append(doc + "\n")
        parts.append("| field | type | default |\n|---|---|---|")
        for f in dataclasses.fields(cls):
            tp = _type(hints[f.name]).replace("|", "\\|")
            parts.append(f"| `{f.name}` | {tp} | {_default(f)} |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker by the generated reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
