"""Exit codes and the one exception type that carries an expected failure to the CLI."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2
    MISSING_PREREQUISITE = 3  # a package, a GPU
    MISSING_RESOURCE = 4  # a file, a model
    INVALID_INPUT = 5
    RUNTIME_FAILURE = 6
    PARTIAL = 7  # a partial result, or a failed gate (`evaluate --fail-on`)


class SkillError(Exception):
    """An expected failure: one line for the user, naming where and how to fix it.

    `where` is the file (and row/line, column) at fault; `fix` is the exact remedy.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ExitCode = ExitCode.RUNTIME_FAILURE,
        where: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = ExitCode(code)
        self.where = where
        self.fix = fix

    def line(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)

    def as_dict(self) -> dict:
        return {"code": int(self.code), "message": self.message, "where": self.where, "fix": self.fix}


def invalid(message: str, *, where: str | None = None, fix: str | None = None) -> SkillError:
    return SkillError(message, code=ExitCode.INVALID_INPUT, where=where, fix=fix)


def missing(message: str, *, where: str | None = None, fix: str | None = None) -> SkillError:
    return SkillError(message, code=ExitCode.MISSING_RESOURCE, where=where, fix=fix)


def prerequisite(message: str, *, fix: str | None = None) -> SkillError:
    return SkillError(message, code=ExitCode.MISSING_PREREQUISITE, fix=fix)
