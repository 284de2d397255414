"""Diagnostics: what ``gwc validate`` reports, and its three output formats."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    file: str  # path relative to the registry root, POSIX separators
    line: int  # 1-based
    column: int  # 1-based
    severity: Severity
    code: str  # stable slug, e.g. "schema", "owner-boundary"
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def summary(diagnostics: list[Diagnostic], files: int) -> str:
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    verdict = "invalid" if errors else "valid"
    return (f"{verdict}: {errors} error{'s' * (errors != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)} in {files} file{'s' * (files != 1)}")


def _github_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def render(diagnostics: list[Diagnostic], files: int, fmt: str) -> str:
    """Render sorted diagnostics as ``text`` (file:line:col), ``json`` or ``github`` annotations."""
    diags = sorted(diagnostics)
    if fmt == "json":
        errors = sum(d.is_error for d in diags)
        return json.dumps({"valid": errors == 0, "errors": errors, "warnings": len(diags) - errors,
                           "files": files, "diagnostics": [asdict(d) for d in diags]}, indent=2)
    lines: Iterable[str]
    if fmt == "github":
        lines = (f"::{d.severity} file={_github_escape(d.file, True)},line={d.line},col={d.column},"
                 f"title={_github_escape('gwc ' + d.code, True)}::{_github_escape(d.message)}"
                 for d in diags)
    else:
        lines = (f"{d.file}:{d.line}:{d.column}: {d.severity}: {d.message} [{d.code}]" for d in diags)
    return "\n".join([*lines, summary(diags, files)])
