"""Issue 7, reliability: hostile values — template injection, install path traversal, remote code, hub tokens."""

from __future__ import annotations

import ast
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_jsonl

from skill.config import TrainConfig
from skill.errors import SkillError
from skill.install import MARKER, SKILL_NAME
from skill.render import CHOICES, render_script, resolve


def _hostile(marker: Path) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f'x"; {touch}; "',
        f"x'; {touch}; '",
        f'"""; {touch}; """',
        f"'''; {touch}; '''",
        f"x\n{touch}\n",
        f"x\r\n{touch}  # \u2028{touch}\x0c",
        f"{{{{ {touch} }}}}{{% raw %}}{{# #}}",
        f"C:\\new\\table\\{touch}\\",
        f'\\"; {touch}; \\"',
        f") or {touch} or (",
        f"$(touch {marker}) `touch {marker}` ${{HOME}}",
        f"org/model\x00{touch}",
        "é中文🙂 " + "a" * 5000,
    ]


def test_template_injection_through_every_rendered_string_field(tmp_path):
    """Every string the template receives is a literal: the script compiles, is ruff-clean, and the value round-trips inert."""
    marker = tmp_path / "PWNED"
    defaults = resolve(TrainConfig())
    fields = sorted({k for k, v in defaults.items() if isinstance(v, str)} | {"push_to_hub"})
    assert {"base", "size", "base_kind", "pooling", "head", "loss", "label_transform", "push_to_hub"} <= set(fields)
    # Choices the template branches on are refused outside their words, before anything is rendered.
    for field in sorted(set(fields) & set(CHOICES)):
        for value in _hostile(marker):
            with pytest.raises(SkillError, match=field):
                render_script({**defaults, field: value})
    fields = [f for f in fields if f not in CHOICES]
    assert fields == ["base", "push_to_hub"]
    out = tmp_path / "scripts"
    out.mkdir()
    cases = 0
    for field in fields:
        for i, value in enumerate(_hostile(marker)):
            text = render_script({**defaults, field: value})
            tree = ast.parse(text)
            constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
            holders = [name for name, node in constants.items() if isinstance(node, ast.Constant) and node.value == value]
            assert len(holders) == 1, (field, value)  # one constant holds the value, exactly
            # Module level holds only imports, constants, definitions and the main guard.
            assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign, ast.FunctionDef, ast.ClassDef, ast.If, ast.Expr)) for n in tree.body)
            assert not any(isinstance(n, ast.Expr) and not isinstance(n.value, ast.Constant) for n in tree.body)
            script = out / f"train_{field}_{i}.py"
            script.write_text(text, encoding="utf-8")
            module = runpy.run_path(str(script), run_name="not_main")  # runs every module-level statement
            assert module[holders[0]] == value
            cases += 1
    assert not marker.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert cases == len(fields) * len(_hostile(marker))


def test_hostile_values_through_the_cli(cli, tmp_path):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    for i, value in enumerate(v for v in _hostile(marker) if "\x00" not in v):
        proc = cli("render", "--run", run, "--base", value, "--force", "--json")
        assert proc.returncode == 0, proc.stdout
        assert runpy.run_path(str(run / "train.py"), run_name=f"cli_{i}")["BASE"] == value
    assert not marker.exists()
    # Values the configuration refuses never reach a template: exit 2, nothing written.
    shutil.rmtree(run)
    refused = [
        ("--base", f"org/model\x00__import__('os').system('touch {marker}')"),
        ("--base", "   "),
        ("--push-to-hub", f"user/repo'; __import__('os').system('touch {marker}'); '"),
        ("--push-to-hub", "../../etc/passwd"),
        ("--push-to-hub", "user/repo\nimport os"),
        ("--loss", "mse'; import os; '"),
        ("--size", "{{ 7*7 }}"),
        ("--learning-rate", "nan"),
        ("--max-minutes", "inf"),
        ("--eval-every", "inf"),
        ("--epochs", "1e400"),
    ]
    for flag, value in refused:
        proc = cli("render", "--run", run, flag, value)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, (flag, value, out)
        assert "Traceback" not in out and "unexpected" not in out and len([x for x in out.splitlines() if x.strip()]) <= 3
        assert not (run / "train.py").exists()
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- install


@pytest.fixture
def project(tmp_path) -> tuple[Path, dict]:
    home, proj = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    (proj / ".git").mkdir(parents=True)
    return proj, {"HOME": str(home)}


def test_install_refuses_a_target_symlink_that_points_outside(project, tmp_path):
    proj, env = project
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    (proj / ".claude" / "skills").mkdir(parents=True)
    os.symlink(outside, proj / ".claude" / "skills" / SKILL_NAME)
    for extra in ([], ["--force"], ["--symlink", "--force"]):
        proc = run_cli("install", "--agent", "claude", "--dest", proj, *extra, env=env)
        assert proc.returncode == 5 and "not installed by reranker-skill" in proc.stderr
    proc = run_cli("uninstall", "--agent", "claude", "--dest", proj, env=env)
    assert proc.returncode == 5
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"] and (proj / ".claude" / "skills" / SKILL_NAME).is_symlink()


@pytest.mark.parametrize("dest", ["a/../b", "../project", "./x/../../y"])
def test_install_refuses_dotdot_in_dest(project, dest):
    proj, env = project
    proc = run_cli("install", "--agent", "codex", "--dest", dest, cwd=proj, env=env)
    assert proc.returncode == 5 and "'..'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (proj / ".agents").exists()


def test_install_refuses_a_skills_folder_symlinked_outside(project, tmp_path):
    proj, env = project
    outside = tmp_path / "outside"
    outside.mkdir()
    (proj / ".agents").mkdir()
    os.symlink(outside, proj / ".agents" / "skills")
    proc = run_cli("install", "--agent", "codex", "--dest", proj, env=env)
    assert proc.returncode == 5 and "leads outside" in proc.stderr
    assert list(outside.iterdir()) == []


def test_uninstall_with_a_tampered_marker_removes_nothing_outside(project, tmp_path):
    proj, env = project
    assert run_cli("install", "--agent", "claude", "--dest", proj, env=env).returncode == 0
    target = proj / ".claude" / "skills" / SKILL_NAME
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "notes.txt").write_text("keep")
    (proj / "README.md").write_text("keep")
    empty_outside = tmp_path / "empty-outside"
    empty_outside.mkdir()
    os.symlink(victim_dir, target / "escape")
    record = json.loads((target / MARKER).read_text())
    record["files"] += ["../../../README.md", str(victim_dir / "notes.txt"), "escape/notes.txt", "../../../../victim/notes.txt"]
    record["created_dirs"] += [str(empty_outside), str(proj)]
    (target / MARKER).write_text(json.dumps(record))
    proc = run_cli("uninstall", "--agent", "claude", "--dest", proj, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (victim_dir / "notes.txt").read_text() == "keep" and (proj / "README.md").read_text() == "keep"
    assert empty_outside.is_dir() and proj.is_dir()
    assert not (target / "SKILL.md").exists()  # what install did create is gone


# --------------------------------------------------------------------------------------------- remote code


def _evil_code(folder: Path) -> None:
    (folder / "evil.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['EVIL_MARKER']).write_text('custom code ran')\n"
        "from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilbert'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )


@pytest.fixture
def evil(tmp_path, monkeypatch) -> dict[str, Path]:
    """Model folders whose loading would run evil.py (which writes a marker file) if custom code were trusted."""
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoModelForSequenceClassification": "evil.EvilModel"}
    out = {"marker": marker}
    for name, arch in (("reranker", "EvilForSequenceClassification"), ("encoder", "EvilModel")):
        folder = tmp_path / f"evil-{name}"
        folder.mkdir()
        _evil_code(folder)
        (folder / "config.json").write_text(json.dumps({"model_type": "evilbert", "architectures": [arch], "auto_map": auto_map}))
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}})
        )
        out[name] = folder
    # A sentence-transformers folder whose modules.json names a module class defined in the folder.
    st = tmp_path / "evil-st"
    st.mkdir()
    (st / "evil_module.py").write_text("import os, pathlib\npathlib.Path(os.environ['EVIL_MARKER']).write_text('custom module ran')\n")
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil_module.Boom"}]))
    (st / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"}))
    out["st"] = st
    return out


@pytest.fixture
def mined(stdlib_domain, tmp_path) -> Path:
    from skill.config import DataConfig, MineConfig
    from skill.mine import mine

    run = tmp_path / "run"
    mine(
        run,
        DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"]),
        MineConfig(retriever="bm25", train_top_k=3, eval_top_k=3),
    )
    return run


def test_custom_code_is_never_run_without_trust_remote_code(evil, mined, stdlib_domain, tiny_reranker, tmp_path, monkeypatch):
    """Every loader, in process, with "y" waiting on stdin (transformers would read it as consent to run the code)."""
    from skill.config import DataConfig, EvaluateConfig, MineConfig, ScoreConfig, TeacherSpec
    from skill.data import ColumnMapping
    from skill.evaluate import _load as evaluate_load
    from skill.evaluate import check_reranker, evaluate
    from skill.export import export_model
    from skill.mine import mine
    from skill.modeling import build_ettin_reranker
    from skill.preflight import inspect_data
    from skill.score import score

    data = DataConfig(corpus=stdlib_domain["corpus"], queries=stdlib_domain["queries"], qrels=stdlib_domain["qrels"])
    attempts = {
        "inspect --tokenizer": lambda f: inspect_data(
            corpus=data.corpus, queries=data.queries, qrels=None, mapping=ColumnMapping(), tokenizer=str(f), max_doc_chars=10**6
        ),
        "mine --embedder": lambda f: mine(tmp_path / "mine-run", data, MineConfig(retriever="dense", embedder=str(f))),
        "score --teacher (auto)": lambda f: score(mined, ScoreConfig(teachers=[TeacherSpec(model=str(f))], max_length=64)),
        "score --teacher-type cross-encoder": lambda f: score(mined, ScoreConfig(teachers=[TeacherSpec(model=str(f), type="cross-encoder")], max_length=64)),
        "score --teacher-type bi-encoder": lambda f: score(mined, ScoreConfig(teachers=[TeacherSpec(model=str(f), type="bi-encoder")], max_length=64)),
        "evaluate --student": lambda f: evaluate(mined, EvaluateConfig(student=str(f), resamples=100)),
        "evaluate --model": lambda f: evaluate_load(check_reranker(str(f), "model"), "model", EvaluateConfig()),  # what evaluate does with each --model
        "export --model": lambda f: export_model(model=f, out=tmp_path / "exported"),
        "a new head on an encoder (render/train/evaluate --base)": lambda f: build_ettin_reranker(str(f), max_seq_length=32),
    }
    tried = 0
    for what, attempt in attempts.items():
        for kind in ("reranker", "encoder", "st"):
            monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))
            try:
                attempt(evil[kind])
            except SkillError as err:
                assert err.line() and err.code in (4, 5), (what, kind, err.line())
            except (ValueError, OSError) as exc:  # the raw loader (build_ettin_reranker) refuses
                assert "trust_remote_code" in str(exc) or "not part of Sentence Transformers" in str(exc) or kind == "st", (what, kind, exc)
            assert not evil["marker"].exists(), f"{what} ran the custom code of {evil[kind].name}"
            tried += 1
    assert tried == 27
    # `evaluate --base` with such an encoder: skipped with a note, never run.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))
    result = evaluate(mined, EvaluateConfig(student=str(tiny_reranker), base=str(evil["encoder"]), resamples=100), force=True)
    assert any("could not be loaded" in n for n in result.warnings) and not evil["marker"].exists()

    # The control: asked to trust it, the same folder's code does run — so the checks above can fail.
    import transformers.dynamic_module_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules-cache"))
    with pytest.raises(Exception):  # noqa: B017 - the stub model cannot be built; running its code is the point
        build_ettin_reranker(str(evil["encoder"]), max_seq_length=32, trust_remote_code=True)
    assert evil["marker"].read_text() == "custom code ran"


def test_custom_code_is_never_run_by_the_cli_even_with_yes_on_stdin(evil, tmp_path, stdlib_domain):
    env = {"EVIL_MARKER": str(evil["marker"])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skill",
            "inspect",
            "--corpus",
            str(stdlib_domain["corpus"]),
            "--queries",
            str(stdlib_domain["queries"]),
            "--tokenizer",
            str(evil["encoder"]),
        ],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=300,
    )
    assert proc.returncode == 5 and "cannot load tokenizer" in proc.stderr and "Traceback" not in proc.stderr  # it exists but does not load: invalid
    assert not evil["marker"].exists()


def test_rendered_script_never_runs_custom_code_of_its_base(evil, toy_scored_run, tmp_path, monkeypatch):
    """The model builder of train.py itself, with and without TRUST_REMOTE_CODE."""
    from skill.render import render

    run = tmp_path / "run"
    shutil.copytree(toy_scored_run, run)
    render(run, TrainConfig(base=str(evil["encoder"]), base_kind="encoder", max_seq_length=32))
    module = runpy.run_path(str(run / "train.py"), run_name="rendered")
    assert module["TRUST_REMOTE_CODE"] is False
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))
    with pytest.raises(ValueError, match="trust_remote_code"):
        module["build_model"]()
    assert not evil["marker"].exists()
    render(run, TrainConfig(base=str(evil["encoder"]), base_kind="encoder", max_seq_length=32, trust_remote_code=True), force=True)
    assert runpy.run_path(str(run / "train.py"), run_name="rendered_trusting")["TRUST_REMOTE_CODE"] is True


# --------------------------------------------------------------------------------------------- hub tokens

TOKEN = "hf_rErAnKeRsKiLlSeCrEt0123456789abcdef"


def test_a_hub_token_never_reaches_output_manifest_or_reports(cli, tmp_path, monkeypatch, stdlib_domain, tiny_reranker):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(var, TOKEN)
    run = tmp_path / "run"
    scores = tmp_path / "scores.jsonl"
    outputs = []
    outputs.append(cli("doctor", "--json"))
    outputs.append(cli("inspect", "--corpus", stdlib_domain["corpus"], "--queries", stdlib_domain["queries"], "--qrels", stdlib_domain["qrels"], "--json"))
    outputs.append(
        cli(
            "mine",
            "--run",
            run,
            "--corpus",
            stdlib_domain["corpus"],
            "--queries",
            stdlib_domain["queries"],
            "--qrels",
            stdlib_domain["qrels"],
            "--retriever",
            "bm25",
            "--train-top-k",
            "3",
            "--eval-top-k",
            "3",
        )
    )
    import pyarrow.parquet as pq

    rows = pq.read_table(run / "train_pairs.parquet").to_pylist() + pq.read_table(run / "heldout_candidates.parquet").to_pylist()
    write_jsonl(
        scores,
        [
            {"query_id": r["query_id"], "doc_id": r["doc_id"], "query": r["query"], "document": r["document"], "label": float(r["relevance"]) * 5 - 2 + i % 3}
            for i, r in enumerate(rows)
        ],
    )
    outputs.append(cli("score", "--run", run, "--teacher", scores, "--json"))
    outputs.append(cli("render", "--run", run, "--base", "someone/base-encoder", "--push-to-hub", "someone/private-reranker", "--json"))
    shutil.copytree(tiny_reranker, run / "student")
    outputs.append(cli("evaluate", "--run", run, "--student", run / "student", "--resamples", "100", "--json"))  # a student `train` did not write
    outputs.append(cli("install", "--agent", "claude", "--dest", tmp_path / "proj", "--json"))
    assert [p.returncode for p in outputs] == [0, 0, 0, 0, 0, outputs[5].returncode, 0]
    assert (run / "report.json").exists() and "push_to_hub" in (run / "train.py").read_text()
    for proc in outputs:
        assert TOKEN not in proc.stdout + proc.stderr
        assert "hf_rErAnKeR" not in proc.stdout + proc.stderr
    for f in [*run.rglob("*"), *(tmp_path / "proj").rglob("*")]:
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
