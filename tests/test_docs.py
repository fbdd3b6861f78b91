"""The docs and code point only at things that exist in the repository."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_architecture_names_only_existing_files():
    text = (ROOT / "docs" / "architecture.md").read_text()
    # The plan names today's files; the last section names work still to do.
    today = text.split("## Still to do")[0]
    named = set(re.findall(r"(?<![\w/.])([a-z_]+(?:/[a-z_]+)*\.py)\b", today))
    assert len(named) >= 40, named
    missing = sorted(
        n
        for n in named
        if not any((ROOT / d / n).exists() for d in ("", "torchrl_eaudeqn", "recipes", "tests"))
    )
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_code_and_docs_cite_no_file_outside_the_repository():
    offenders = []
    for folder in ("torchrl_eaudeqn", "recipes", "configs", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".yaml", ".md"}:
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"\b(REFERENCE|DESIGN)\.md\b", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cite files outside the repository: {offenders}"
