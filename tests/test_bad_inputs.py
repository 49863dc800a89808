"""Bad input to every command: one row per kind, the message it must print, exit code 2, nothing written.

Each row is ``(command line, expected message fragment)``. Placeholders in braces are filled from the
fixtures below: ``{bert}``/``{roberta}`` tiny models, ``{corpus}`` a text file, ``{ner}``/``{qa}`` task
data folders, ``{ftrun}`` a finished fine-tuning run, ``{alrun}`` a finished alignment run, ``{user}`` a
folder holding a user's file, ``{out}`` a fresh output path and ``{tmp}`` the test's own folder. Every
row checks that the command exits with 2, prints ``alad <command>: error: ...`` (or argparse's usage
error) with the fragment on one line, that ``{out}`` was not created, and that every existing folder
the row names is byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_tasks import write_corpus, write_ner_data, write_qa_data, write_recipe, write_squad_v1_data

from alad.cli import main


@dataclass
class Row:
    id: str
    argv: str
    message: str
    files: dict[str, Any] = field(default_factory=dict)  # name -> text (or a callable(env) -> path) for {name}
    needs_no_gpu: bool = False


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data)


def _damaged_run(kind: str):
    """A copy of the finished fine-tuning run with one weights file damaged."""

    def make(env: dict[str, Path]) -> Path:
        target = env["tmp"] / f"ftrun-{kind}"
        shutil.copytree(env["ftrun"], target)
        if kind == "truncated-encoder":
            weights = target / "model" / "encoder" / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        elif kind == "flipped-head":
            weights = target / "model" / "head.safetensors"
            data = bytearray(weights.read_bytes())
            data[-3] ^= 0xFF
            weights.write_bytes(bytes(data))
        return target

    return make


def _damaged_align(kind: str):
    def make(env: dict[str, Path]) -> Path:
        target = env["tmp"] / f"alrun-{kind}"
        shutil.copytree(env["alrun"], target)
        if kind == "flipped-adapter":
            weights = target / "w1" / "adapter.safetensors"
            data = bytearray(weights.read_bytes())
            data[-5] ^= 0x01
            weights.write_bytes(bytes(data))
        elif kind == "summary-missing-keys":
            summary = json.loads((target / "summary.json").read_text())
            del summary["windows"]
            (target / "summary.json").write_text(json.dumps(summary))
        elif kind == "bad-json-header":
            (target / "w1" / "adapter_config.json").write_text("{not json")
            return target / "w1"
        return target

    return make


def _corrupt_compressed(env: dict[str, Path]) -> Path:
    from alad.compression.layer_dropping import drop_layers

    out = drop_layers(env["bert"], [0], env["tmp"] / "cut")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x10
    weights.write_bytes(bytes(data))
    return out


def _single_sentence(env: dict[str, Path]) -> Path:
    path = env["tmp"] / "one.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nthe NN B-NP O\nTeacher NN B-NP B-PER\n\n", encoding="utf-8")
    return path


def _squad_v1_folder(kind: str):
    """SQuAD 1.1 folders: ``v1`` as it should be; ``v2-as-v1``: its dev file is really a SQuAD 2.0 file
    with unanswerable questions."""

    def make(env: dict[str, Path]) -> Path:
        folder = write_squad_v1_data(env["tmp"] / f"squad-v1-{kind}")
        if kind == "v2-as-v1":
            shutil.copy(env["qa"] / "dev-v2.0.json", folder / "dev-v1.1.json")
        return folder

    return make


def _squad_overlap(env: dict[str, Path]) -> Path:
    """SQuAD 2.0 files whose train file also holds a dev article."""
    folder = write_qa_data(env["tmp"] / "squad-overlap")
    train = json.loads((folder / "train-v2.0.json").read_text())
    train["data"].append(json.loads((folder / "dev-v2.0.json").read_text())["data"][2])
    (folder / "train-v2.0.json").write_text(json.dumps(train))
    return folder


def _qa_recipe(env: dict[str, Path]) -> Path:
    recipe = {
        "task": "qa",
        "data": f"squad:{_squad_overlap(env)}",
        "eval_split": "dev",
        "pairs": [{"name": "tiny", "student": str(env["bert"]), "teacher": str(env["bert"])}],
        "windows": [1],
        "profiles": {"quick": {"teachers_dir": str(env["tmp"] / "teachers")}},
    }
    path = env["tmp"] / "qa.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _recipe(**extra):
    def make(env: dict[str, Path]) -> Path:
        folder = env["tmp"] / "recipe"
        folder.mkdir(exist_ok=True)
        path = write_recipe(folder, env["bert"], env["sentences"], **extra)
        return path

    return make


def _recipe_edit(edit):
    def make(env: dict[str, Path]) -> Path:
        path = _recipe()(env)
        data = yaml.safe_load(path.read_text())
        edit(data)
        path.write_text(yaml.safe_dump(data))
        return path

    return make


ALIGN = "align --student {bert} --teacher {roberta} --corpus {corpus} --windows 1 --epochs 1 --hidden-size 8 --quiet"
ALIGN += " --cache-dir {tmp}/cache"
FT = "finetune --student {bert} --task ner --data conll2003:{ner} --epochs 1 --max-train 8 --quiet"
TEACHER = "finetune-teacher --teacher {bert} --task ner --data conll2003:{ner} --epochs 1 --max-train 8 --quiet"

ROWS = [
    # ---------------------------------------------------------------------------------------- align
    Row("align-lr-inf", ALIGN + " --lr inf --out {out}", "--lr must be a finite number, got inf"),
    Row("align-lr-nan", ALIGN + " --lr nan --out {out}", "--lr must be a finite number, got nan"),
    Row("align-lr-negative", ALIGN + " --lr -0.1 --out {out}", "--lr must be > 0 and <= 10, got -0.1"),
    Row("align-epochs-0", ALIGN + " --epochs 0 --out {out}", "--epochs must be >= 1, got 0"),
    Row("align-batch-tokens-0", ALIGN + " --batch-tokens 0 --out {out}", "--batch-tokens must be >= 1"),
    Row("align-val-fraction", ALIGN + " --val-fraction 1.5 --out {out}", "--val-fraction must be > 0 and < 1"),
    Row("align-warmup", ALIGN + " --warmup-ratio 2 --out {out}", "--warmup-ratio must be >= 0 and <= 1"),
    Row("align-dropout", ALIGN + " --dropout 1 --out {out}", "--dropout must be >= 0 and < 1"),
    Row("align-weight-decay", ALIGN + " --weight-decay -1 --out {out}", "--weight-decay must be >= 0"),
    Row("align-grad-clip-inf", ALIGN + " --grad-clip inf --out {out}", "--grad-clip must be a finite number"),
    Row("align-max-texts-1", ALIGN + " --max-texts 1 --out {out}", "--max-texts must be >= 2"),
    Row("align-student-layer-99", ALIGN + " --student-layer 99 --out {out}", "--student-layer 99 is out of range"),
    Row("align-teacher-layer--9", ALIGN + " --teacher-layer -9 --out {out}", "--teacher-layer -9 is out of range"),
    Row("align-corpus-missing", ALIGN + " --corpus {tmp}/nope.txt --out {out}", "no such file or directory"),
    Row("align-corpus-format", ALIGN + " --corpus-format csv --out {out}", "--corpus-format must be one of auto"),
    Row("align-activation", ALIGN + " --activation swish --out {out}", "--activation must be one of gelu"),
    Row("align-init-missing", ALIGN + " --init {tmp}/none --out {out}", "--init"),
    Row("align-even-window", ALIGN + " --windows 2 --out {out}", "window sizes must be odd integers >= 1"),
    Row("align-epochs-text", ALIGN + " --epochs many --out {out}", "--epochs takes a int, got 'many'"),
    Row(
        "align-zero-width-corpus",
        ALIGN + " --corpus {zw} --out {out}",
        "the corpus gives no usable token",
        files={"zw": "\n".join(["\u200d\u200d", "\u0301\u0302", "\u200d", "\u0301"] * 5) + "\n"},
    ),
    Row("align-yaml-syntax", ALIGN + " --config {cfg} --out {out}", "not valid YAML", files={"cfg.yaml": "a: [1, 2\n"}),
    Row(
        "align-yaml-epochs-text",
        "align --config {cfg} --out {out}",
        "--epochs must be an integer, got 'ten'",
        files={"cfg.yaml": 'epochs: "ten"\n'},
    ),
    Row(
        "align-yaml-windows-int",
        "align --config {cfg} --out {out}",
        "--windows must be a list of odd window sizes",
        files={"cfg.yaml": "windows: 3\n"},
    ),
    Row(
        "align-yaml-empty-student",
        "align --config {cfg} --out {out}",
        "--student is empty; name the model",
        files={"cfg.yaml": "student:\n"},
    ),
    Row(
        "align-yaml-bool-text",
        "align --config {cfg} --out {out}",
        "--align-special-tokens must be true or false",
        files={"cfg.yaml": "align_special_tokens: maybe\n"},
    ),
    Row(
        "align-yaml-unknown",
        "align --config {cfg} --out {out}",
        "unknown options ['learning_rate']",
        files={"cfg.yaml": "learning_rate: 1\n"},
    ),
    Row(
        "align-yaml-not-mapping",
        "align --config {cfg} --out {out}",
        "must hold a mapping of option names",
        files={"cfg.yaml": "- 1\n- 2\n"},
    ),
    Row("align-json-syntax", "align --config {cfg} --out {out}", "not valid JSON", files={"cfg.json": '{"epochs": }'}),
    Row("align-config-missing", "align --config {tmp}/none.yaml --out {out}", "config file not found"),
    Row("align-out-user-folder", ALIGN + " --out {user}", "is not an alad run folder"),
    Row("align-out-finetune-run", ALIGN + " --out {ftrun}", "holds a fine-tuning run, not an alignment run"),
    Row("align-out-is-file", ALIGN + " --out {corpus}", "is a file, not a folder"),
    Row(
        "align-corrupt-student",
        ALIGN + " --student {cut} --out {out}",
        "do not match the SHA-256 alad recorded",
        files={"cut": _corrupt_compressed},
    ),
    Row("align-device-cuda", ALIGN + " --device cuda --out {out}", "device 'cuda' was asked for", needs_no_gpu=True),
    # ------------------------------------------------------------------------------------- finetune
    Row("finetune-lr-head-nan", FT + " --lr-head nan --out {out}", "--lr-head must be a finite number, got nan"),
    Row("finetune-lr-encoder-inf", FT + " --lr-encoder inf --out {out}", "--lr-encoder must be a finite number"),
    Row("finetune-lr-adapter-zero", FT + " --lr-adapter 0 --out {out}", "--lr-adapter must be > 0"),
    Row("finetune-epochs-0", FT + " --epochs 0 --out {out}", "--epochs must be >= 1, got 0"),
    Row("finetune-epochs-negative", FT + " --epochs -2 --out {out}", "--epochs must be >= 1, got -2"),
    Row("finetune-batch-size-0", FT + " --batch-size 0 --out {out}", "--batch-size must be >= 1, got 0"),
    Row("finetune-max-train-0", FT + " --max-train 0 --out {out}", "--max-train must be >= 1"),
    Row("finetune-warmup-negative", FT + " --warmup-ratio -0.1 --out {out}", "--warmup-ratio must be >= 0"),
    Row("finetune-seed-negative", FT + " --seed -1 --out {out}", "--seed must be >= 0"),
    Row("finetune-qa-on-conll", FT + " --task qa --out {out}", "--task qa cannot train on conll2003 data"),
    Row("finetune-pos-on-squad", FT + " --task pos --data squad:{qa} --out {out}", "--task pos cannot train on squad"),
    Row(
        "finetune-split-name", FT + " --train-split validation --out {out}", "--train-split must be train, dev or test"
    ),
    Row(
        "finetune-doc-stride",
        "finetune --task qa --data squad:{qa} --doc-stride 500 --out {out}",
        "--doc-stride (500) must be smaller than --max-length (384)",
    ),
    Row(
        "finetune-qa-v1-eval-file-is-v2",
        "finetune --task qa --data squad:{qa} --squad-v1-eval true --squad-v1 {v1} --out {out}",
        "cannot be scored as SQuAD 1.1: 2 of its 5 questions are unanswerable",
        files={"v1": _squad_v1_folder("v2-as-v1")},
    ),
    Row(
        "finetune-qa-v11-data-for-v2-scoring",
        "finetune --task qa --data squad:{v1} --out {out}",
        "is a SQuAD 1.1 file (no question has an is_impossible field), but the evaluation split of --data is scored "
        "with the official SQuAD 2.0 script",
        files={"v1": _squad_v1_folder("v1")},
    ),
    Row(
        "finetune-qa-eval-article-in-training",
        "finetune --task qa --data squad:{overlap} --out {out}",
        "1 article(s) of the evaluation split are also in the training pool (same title or paragraph): 'dev-article2'",
        files={"overlap": _squad_overlap},
    ),
    Row(
        "finetune-qa-max-length-short",
        "finetune --task qa --student {bert} --data squad:{qa} --max-length 16 --doc-stride 4 --quiet --out {out}",
        "--max-length 16 is too short for question",
    ),
    Row(
        "finetune-squad-negatives-fraction",
        "finetune --task qa --data squad:{qa} --squad-negatives 1.5 --out {out}",
        "--squad-negatives is a share below 1 or a whole number per article, got 1.5",
    ),
    Row("finetune-squad-v1-for-ner", FT + " --squad-v1-train true --out {out}", "are for --task qa"),
    Row("finetune-head-only-no-adapter", FT + " --mode head-only --out {out}", "mode 'head-only' needs --adapter"),
    Row("finetune-unknown-format", FT + " --data csv:{ner} --out {out}", "unknown data format 'csv'"),
    Row("finetune-data-missing", FT + " --data conll2003:{tmp}/none --out {out}", "does not exist; check the path"),
    Row("finetune-adapter-missing", FT + " --adapter {tmp}/none --out {out}", "adapter folder not found"),
    Row(
        "finetune-single-sentence-file",
        FT + " --data conll2003:{one} --out {out}",
        "needs at least 2",
        files={"one": _single_sentence},
    ),
    Row("finetune-out-alignment-run", FT + " --out {alrun}", "holds an alignment run, not a fine-tuning run"),
    Row("finetune-out-user-folder", FT + " --out {user}", "is not an alad run folder"),
    Row(
        "finetune-yaml-epochs-text",
        "finetune --config {cfg} --out {out}",
        "--epochs must be an integer",
        files={"cfg.yaml": "epochs: ten\n"},
    ),
    Row(
        "finetune-yaml-empty-student",
        "finetune --config {cfg} --out {out}",
        "--student is empty",
        files={"cfg.yaml": "student: ''\n"},
    ),
    # ----------------------------------------------------------------------------- finetune-teacher
    Row("teacher-lr-head-nan", TEACHER + " --lr-head nan --out {out}", "--lr-head must be a finite number"),
    Row("teacher-epochs-0", TEACHER + " --epochs 0 --out {out}", "--epochs must be >= 1"),
    Row("teacher-model-missing", TEACHER + " --teacher {tmp}/none --out {out}", "model path not found"),
    Row("teacher-empty", TEACHER + " --teacher '' --out {out}", "--teacher is missing or empty"),
    Row(
        "teacher-missing",
        "finetune-teacher --task ner --data conll2003:{ner} --out {out} --quiet",
        "--teacher is missing or empty",
    ),
    Row("teacher-init-from-none", TEACHER + " --init-from {tmp}/none --out {out}", "leave --student out"),
    Row(
        "teacher-init-from-not-a-run",
        "finetune-teacher --init-from {tmp} --task ner --data conll2003:{ner} --out {out} --quiet",
        "is not a finished fine-tuning run (no model/ folder)",
    ),
    Row("teacher-qa-on-conll", TEACHER + " --task qa --out {out}", "--task qa cannot train on conll2003 data"),
    # ------------------------------------------------------------------------------------- evaluate
    Row("evaluate-missing-run", "evaluate {tmp}/none", "is not a fine-tuning run folder"),
    Row("evaluate-max-eval-0", "evaluate {ftrun} --max-eval 0 --quiet", "--max-eval must be >= 1"),
    Row(
        "evaluate-split-name", "evaluate {ftrun} --split validation --quiet", "--eval-split must be train, dev or test"
    ),
    Row(
        "evaluate-truncated-encoder",
        "evaluate {bad} --quiet",
        "does not match the SHA-256 recorded",
        files={"bad": _damaged_run("truncated-encoder")},
    ),
    Row(
        "evaluate-flipped-head",
        "evaluate {bad} --quiet",
        "does not match the SHA-256 recorded",
        files={"bad": _damaged_run("flipped-head")},
    ),
    # -------------------------------------------------------------------------------------- predict
    Row("predict-missing-run", "predict {tmp}/none 'a b'", "is not a fine-tuning run folder"),
    Row("predict-no-text", "predict {ftrun}", "pass the sentence to tag"),
    Row("predict-blank-text", "predict {ftrun} '   '", "the text to tag is empty"),
    Row(
        "predict-truncated-encoder",
        "predict {bad} 'the cat'",
        "does not match the SHA-256 recorded",
        files={"bad": _damaged_run("truncated-encoder")},
    ),
    # ------------------------------------------------------------------------------------------ run
    Row(
        "run-pair-name-dotdot",
        "run {recipe} --out {out} --quiet",
        "pair name '../x' cannot be a folder name",
        files={"recipe": _recipe_edit(lambda d: d["pairs"][0].update(name="../x"))},
    ),
    Row(
        "run-pair-name-slash",
        "run {recipe} --out {out} --quiet",
        "pair name 'a/b' cannot be a folder name",
        files={"recipe": _recipe_edit(lambda d: d["pairs"][0].update(name="a/b"))},
    ),
    Row(
        "run-unknown-profile",
        "run {recipe} --profile full --out {out}",
        "has no profile 'full'",
        files={"recipe": _recipe()},
    ),
    Row(
        "run-unknown-pair",
        "run {recipe} --pairs nope --out {out}",
        "has no pair named ['nope']",
        files={"recipe": _recipe()},
    ),
    Row(
        "run-unknown-key",
        "run {recipe} --out {out}",
        "unknown keys ['epochz']",
        files={"recipe": _recipe_edit(lambda d: d.update(epochz=1))},
    ),
    Row("run-yaml-syntax", "run {cfg} --out {out}", "not valid YAML", files={"cfg.yaml": "task: [ner\n"}),
    Row("run-config-missing", "run {tmp}/none.yaml --out {out}", "config file not found"),
    Row(
        "run-stage1-epochs-text",
        "run {recipe} --out {out}",
        "--epochs must be an integer, got 'ten'",
        files={"recipe": _recipe_edit(lambda d: d["profiles"]["quick"]["stage1"].update(epochs="ten"))},
    ),
    Row(
        "run-lr-head-nan",
        "run {recipe} --out {out}",
        "--lr-head must be a finite number",
        files={"recipe": _recipe_edit(lambda d: d.update(lr_head=float("nan")))},
    ),
    Row(
        "run-windows-int",
        "run {recipe} --out {out}",
        "windows must be a list of odd window sizes",
        files={"recipe": _recipe_edit(lambda d: d.update(windows=3))},
    ),
    Row(
        "run-bad-mode",
        "run {recipe} --out {out}",
        "modes: 'frozn' is not one of",
        files={"recipe": _recipe_edit(lambda d: d.update(modes=["frozn"]))},
    ),
    Row(
        "run-qa-eval-article-in-training",
        "run {recipe} --out {out} --quiet",
        "article(s) of the evaluation split are also in the training pool",
        files={"recipe": _qa_recipe},
    ),
    Row("run-out-user-folder", "run {recipe} --out {user}", "is not an alad run folder", files={"recipe": _recipe()}),
    # ------------------------------------------------------------------------------------- compress
    Row("compress-layer-out-of-range", "compress --model {bert} --keep-layers 0,5 --out {out}", "out of range [5]"),
    Row("compress-layer-text", "compress --model {bert} --keep-layers a,b --out {out}", "cannot parse layer list"),
    Row("compress-layer-repeated", "compress --model {bert} --keep-layers 0,0 --out {out}", "repeats layers"),
    Row("compress-model-missing", "compress --model {tmp}/none --keep-layers 0 --out {out}", "model path not found"),
    Row(
        "compress-out-user-folder",
        "compress --model {bert} --keep-layers 0 --out {user}",
        "is not the output of a previous `alad compress`",
    ),
    # ----------------------------------------------------------------------------------------- info
    Row("info-missing", "info {tmp}/none", "does not exist"),
    Row("info-not-alad", "info {user}", "is none of what alad info describes"),
    Row(
        "info-summary-missing-keys",
        "info {bad}",
        "is incomplete or not written by this alad",
        files={"bad": _damaged_align("summary-missing-keys")},
    ),
    Row(
        "info-flipped-adapter",
        "info {bad}/w1",
        "does not match the SHA-256 recorded",
        files={"bad": _damaged_align("flipped-adapter")},
    ),
    Row(
        "info-adapter-header-not-json",
        "info {bad}",
        "is not valid JSON",
        files={"bad": _damaged_align("bad-json-header")},
    ),
]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own usage errors
            code = exit_info.code
    return code, out.getvalue(), err.getvalue()


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def env(bert_dir, roberta_dir, sentences, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = write_corpus(root / "corpus.txt", sentences)
    ner = write_ner_data(root / "ner")
    qa = write_qa_data(root / "qa")
    user = root / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("my own file\n")
    ftrun = root / "ftrun"
    code, _, err = _run(
        [str(a) for a in ["finetune", "--student", bert_dir, "--task", "ner", "--data", f"conll2003:{ner}"]]
        + ["--epochs", "1", "--max-train", "8", "--quiet", "--out", str(ftrun)]
    )
    assert code == 0, err
    alrun = root / "alrun"
    code, _, err = _run(
        [str(a) for a in ["align", "--student", bert_dir, "--teacher", roberta_dir, "--corpus", corpus]]
        + ["--windows", "1", "--epochs", "1", "--hidden-size", "8", "--cache-dir", str(root / "cache")]
        + ["--quiet", "--out", str(alrun)]
    )
    assert code == 0, err
    return {
        "bert": bert_dir,
        "roberta": roberta_dir,
        "sentences": sentences,
        "corpus": corpus,
        "ner": ner,
        "qa": qa,
        "user": user,
        "ftrun": ftrun,
        "alrun": alrun,
    }


def test_the_table_covers_every_command_and_40_kinds():
    commands = {row.argv.split()[0] for row in ROWS}
    assert commands >= {"align", "finetune", "finetune-teacher", "evaluate", "predict", "run", "compress", "info"}
    assert len({row.id for row in ROWS}) == len(ROWS) >= 40


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, env, tmp_path, monkeypatch):
    if row.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "alad-cache"))
    values: dict[str, Any] = {**env, "tmp": tmp_path, "out": tmp_path / "out"}
    for name, content in row.files.items():
        if callable(content):
            values[name] = content({**values, "tmp": tmp_path})
        else:
            path = tmp_path / name
            path.write_text(content, encoding="utf-8")
            values[Path(name).stem] = path
    import shlex

    argv = [part.format(**values) for part in shlex.split(row.argv)]
    watched = {name: Path(str(values[name])) for name in ("user", "ftrun", "alrun", "corpus", "bad") if name in values}
    watched = {name: path for name, path in watched.items() if "{" + name + "}" in row.argv}
    before = {name: _snapshot(path) for name, path in watched.items()}

    code, stdout, stderr = _run(argv)

    assert code == 2, (stdout, stderr)
    assert row.message in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr  # one line naming the problem
    assert not (tmp_path / "out").exists(), "the output folder was created"
    for name, path in watched.items():
        assert _snapshot(path) == before[name], f"{name} changed"
