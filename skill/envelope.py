"""The one response shape every command returns, printed as JSON (`--json`) or as text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from skill.errors import ExitCode, SkillError

SCHEMA_VERSION = 1


@dataclass
class Result:
    """What a command hands back to the CLI layer."""

    inputs: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    status: Literal["ok", "error", "partial"] = "ok"
    exit_code: ExitCode = ExitCode.OK
    text: str = ""  # the human-readable report


def envelope(command: str, result: Result) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "status": result.status,
        "exit_code": int(result.exit_code),
        "inputs": result.inputs,
        "artifacts": {k: str(v) for k, v in result.artifacts.items()},
        "metrics": result.metrics,
        "warnings": result.warnings,
        "errors": result.errors,
    }


def error_result(err: SkillError, inputs: dict[str, Any] | None = None) -> Result:
    return Result(inputs=inputs or {}, errors=[err.as_dict()], status="error", exit_code=err.code, text=err.line())


def to_json(command: str, result: Result) -> str:
    return json.dumps(envelope(command, result), default=str)
