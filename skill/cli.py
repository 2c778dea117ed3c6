"""The command line: a thin click layer over the stage modules.

Every command takes `--json` and then prints exactly one JSON envelope on stdout; anything a
library prints while the command runs goes to stderr. Expected failures are one line and a
fixed exit code (`skill.errors.ExitCode`); tracebacks only with `--debug`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from skill.envelope import Result, error_result, to_json
from skill.errors import ExitCode, SkillError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit(command: str, result: Result, as_json: bool) -> None:
    if as_json:
        click.echo(to_json(command, result))
        return
    if result.text:
        stream_err = result.exit_code not in (ExitCode.OK, ExitCode.PARTIAL)
        click.echo(result.text, err=stream_err)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)


def envelope_command(name: str, **settings) -> Callable:
    """Register a command that returns a `Result`; adds `--json` and the error handling."""

    def decorate(fn: Callable[..., Result]) -> click.Command:
        @click.option("--json", "as_json", is_flag=True, help="Print one JSON envelope on stdout.")
        @functools.wraps(fn)
        def wrapper(as_json: bool, **kwargs):
            debug = bool(os.environ.get("RERANKER_SKILL_DEBUG"))
            inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if v not in (None, (), [])}
            inputs.pop("token", None)  # never echo a hub token
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    result = fn(**kwargs)
                result.inputs = {**inputs, **result.inputs}
            except SkillError as err:
                result = error_result(err, inputs)
            except KeyboardInterrupt:
                result = error_result(SkillError("interrupted", code=ExitCode.RUNTIME_FAILURE, fix="rerun the same command; finished work is kept"), inputs)
            except Exception as exc:  # an unexpected failure: still one line, still an envelope
                if debug:
                    traceback.print_exc()
                err = SkillError(
                    f"unexpected {type(exc).__name__}: {exc}".splitlines()[0][:500],
                    code=ExitCode.RUNTIME_FAILURE,
                    fix="set RERANKER_SKILL_DEBUG=1 for the traceback and report it",
                )
                result = error_result(err, inputs)
            _emit(name, result, as_json)
            sys.exit(int(result.exit_code))

        return cli.command(name, **settings)(wrapper)

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reranker-skill")
def cli() -> None:
    """Fine-tune a domain reranker: inspect → mine → score → render → train → evaluate.

    Every command takes --json (one JSON envelope on stdout). Exit codes: 0 ok, 2 usage,
    3 missing prerequisite, 4 missing resource, 5 invalid input, 6 runtime failure,
    7 partial result / failed gate.
    """


def map_option(fn):
    return click.option(
        "--map",
        "mapping",
        multiple=True,
        metavar="KIND.FIELD=COLUMN",
        help="Map a column, e.g. corpus.text=contents, queries.id=qid, qrels.doc_id=pid. Repeatable.",
    )(fn)


# --------------------------------------------------------------------------------------------- doctor


@envelope_command("doctor")
def doctor_cmd() -> Result:
    """Check the environment: versions, accelerate, CUDA, bf16, FlashAttention, disk, hub, packaged models."""
    from skill.doctor import doctor

    return doctor()


# --------------------------------------------------------------------------------------------- inspect


@envelope_command("inspect")
@click.option("--corpus", type=click.Path(path_type=Path), required=True, help="Corpus file or datasets folder (_id/id, text[, title]).")
@click.option("--queries", type=click.Path(path_type=Path), required=True, help="Queries file (_id/id, text).")
@click.option("--qrels", type=click.Path(path_type=Path), help="Relevance labels (query-id, corpus-id, score).")
@click.option("--tokenizer", help="Student tokenizer (hub id or folder) for token-length statistics.")
@click.option("--max-doc-chars", type=click.IntRange(min=1), default=None, help="Reject documents longer than this (default 1,000,000).")
@map_option
def inspect_cmd(corpus: Path, queries: Path, qrels: Path | None, tokenizer: str | None, max_doc_chars: int | None, mapping: tuple[str, ...]) -> Result:
    """Preflight the data: READY, NEEDS MAPPING or INVALID, with the fix for each problem. Exit 0 only when READY."""
    from skill.data import DEFAULT_MAX_DOC_CHARS, ColumnMapping
    from skill.preflight import inspect_data

    return inspect_data(
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        mapping=ColumnMapping.parse(mapping),
        tokenizer=tokenizer,
        max_doc_chars=max_doc_chars or DEFAULT_MAX_DOC_CHARS,
    )


# --------------------------------------------------------------------------------------------- mine, score (issue 3)

# --------------------------------------------------------------------------------------------- render, train (issue 4)

# --------------------------------------------------------------------------------------------- evaluate (issue 5)

# --------------------------------------------------------------------------------------------- export (issue 7)

# --------------------------------------------------------------------------------------------- install, run, quickstart (issue 6)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(int(ExitCode.RUNTIME_FAILURE))
    except click.ClickException as exc:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if "--json" in sys.argv:
            err = SkillError(exc.format_message(), code=ExitCode.USAGE, fix=f"see `reranker-skill {command} --help`")
            click.echo(to_json(command, error_result(err)))
        else:
            exc.show()
        sys.exit(int(ExitCode.USAGE))
