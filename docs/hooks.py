"""MkDocs hook: pages that include a repository file instead of copying it.

A line ``<!-- include: deploy/README.md -->`` (a path relative to the repository root) is
replaced by that file's text when the site is built, so a document that must stay beside the
files it describes (the install guide in ``deploy/``) has one copy and still is a page of the
site. ``<!-- include: PATH demote -->`` also turns its headings one level down, so that it can
sit under the including page's own title. A missing file stops the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+)(?P<demote> demote)? -->$", re.M)


def demoted(text: str) -> str:
    """``text`` with every Markdown heading one level deeper; lines in fenced code stay as they are."""
    lines, fenced = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        lines.append(line)
    return "".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config["config_file_path"]).resolve().parent

    def include(match: re.Match[str]) -> str:
        path = (root / match["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ValueError(f"{page.file.src_path}: cannot include {match['path']}: no such file in the repository")
        text = path.read_text(encoding="utf-8")
        return demoted(text) if match["demote"] else text

    return INCLUDE.sub(include, markdown)
