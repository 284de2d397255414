"""What a registry holds per manifest and per policy rule: the validated model and where it came from
(its own module so the checks and the registry loader both use it without importing each other)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gwc.compiler.build.models import PolicyRule, ServerManifest
from gwc.compiler.build.sources import SourceFile


@dataclass
class ServerEntry:
    manifest: ServerManifest
    source: SourceFile
    # registry/<server>.tools.json, when there is one, and by tool name the definitions in it that
    # pass every check, as written: that text is what the bundle carries and nodes serve
    lock: SourceFile | None = None
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RuleEntry:
    rule: PolicyRule
    source: SourceFile
    index: int  # position in its file's list
    folder: str  # the policies/<folder>/ it lives in: a team name or "global"
    line: int  # where the rule starts, for messages and the compiled rule's source

    @property
    def rule_id(self) -> str:
        return self.rule.id or f"{self.source.rel}#{self.index}"

    @property
    def where(self) -> str:
        return f"{self.source.rel}:{self.line}"
