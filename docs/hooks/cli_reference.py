"""mkdocs hook: the CLI reference page is generated from the click commands at build time.

A page holding the line ``<!-- cli-reference -->`` gets it replaced by the ``--help`` text
of every command and subcommand of ``evoplastic``, so the reference cannot fall behind the
code. ``tests/test_docs.py`` checks that every subcommand is in the generated text.
"""

from __future__ import annotations

import click

MARKER = "<!-- cli-reference -->"


def commands(group: click.Group | None = None, prefix: str = "evoplastic"):
    """``(name, command)`` of every command under ``group``, depth first, in name order."""
    if group is None:
        from evoplastic.cli import cli as group
    out = []
    ctx = click.Context(group, info_name=prefix)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        out.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            out.extend(commands(command, f"{prefix} {name}"))
    return out


def help_text(name: str, command: click.Command) -> str:
    """The ``--help`` output of one command, as click prints it."""
    ctx = click.Context(command, info_name=name, terminal_width=100, max_content_width=100)
    return command.get_help(ctx)


def reference() -> str:
    """Markdown: one section per command with its help text."""
    from evoplastic.cli import cli

    parts = ["## evoplastic\n", "```text\n" + help_text("evoplastic", cli) + "\n```\n"]
    for name, command in commands():
        parts.append(f"## {name}\n")
        parts.append("```text\n" + help_text(name, command) + "\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker by the generated reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
