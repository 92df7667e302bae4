"""Spec errors: every problem found in a scenario, each located as ``file:line: field.path: message``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One problem in a spec: where it is (file, YAML line, dotted field path) and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def format(self) -> str:
        """Render as ``file:line: path: message`` on one line (newlines in the message are folded)."""
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        msg = " ".join(self.message.split())
        return f"{where}: {self.path}: {msg}" if self.path else f"{where}: {msg}"


class SpecError(Exception):
    """A spec could not be loaded; carries every issue found, not just the first."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = tuple(issues)
        super().__init__("\n".join(i.format() for i in self.issues))

    def lines(self) -> list[str]:
        """One formatted line per issue."""
        return [i.format() for i in self.issues]
