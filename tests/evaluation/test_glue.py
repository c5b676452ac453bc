"""GLUE suite: official metrics against scikit-learn / scipy, the original TSV layouts and their quirks, the
Hugging Face path, label checks, and fine-tuning / evaluation plumbing on a tiny ModernAlbert."""

from __future__ import annotations

import argparse
import json
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import matthews_corrcoef as sk_mcc
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modernalbert.cli.suites.glue import (
    add_evaluate_arguments,
    add_finetune_arguments,
    run_evaluate,
    run_finetune,
)
from modernalbert.evaluation import glue
from modernalbert.evaluation.config import FinetuneConfig
from modernalbert.model.loading import load_model
from tests.conftest import SPECIALS, WORDS, make_tokenizer

# ============================================================================================ metrics


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn / scipy warn on degenerate inputs; the values are what we compare
        return fn(*args, **kwargs)


@pytest.mark.parametrize("seed", range(20))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 60)), int(rng.integers(2, 4))
    y, p = rng.integers(0, k, n), rng.integers(0, k, n)
    assert glue.accuracy(p, y) == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert glue.matthews_corrcoef(p, y) == pytest.approx(_quiet(sk_mcc, y, p), abs=1e-12)
    yb, pb = y % 2, p % 2
    assert glue.f1(pb, yb) == pytest.approx(_quiet(f1_score, yb, pb, zero_division=0.0), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_correlations_equal_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 60))
    # rounded values: many ties, which Spearman averages
    x, z = rng.normal(size=n).round(1) * 5, rng.normal(size=n).round(1) * 5
    for a, b in ((glue.pearson(x, z), pearsonr(x, z)[0]), (glue.spearman(x, z), spearmanr(x, z)[0])):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-10)


def test_degenerate_cases():
    y = [0, 1, 1, 0, 1]
    constant = [1] * 5
    assert glue.matthews_corrcoef(constant, y) == 0.0 == _quiet(sk_mcc, y, constant)
    assert glue.matthews_corrcoef(y, y) == 1.0
    assert glue.matthews_corrcoef([1 - v for v in y], y) == pytest.approx(-1.0)
    assert glue.f1([0] * 5, [0] * 5) == 0.0 == _quiet(f1_score, [0] * 5, [0] * 5, zero_division=0.0)
    assert glue.f1([1] * 5, y) == pytest.approx(f1_score(y, [1] * 5))
    # Pearson / Spearman of a constant prediction are undefined: NaN, as scipy says
    scores = [0.5, 2.0, 3.5, 1.0, 4.8]
    assert math.isnan(glue.pearson([2.0] * 5, scores)) and math.isnan(_quiet(pearsonr, [2.0] * 5, scores)[0])
    assert math.isnan(glue.spearman([2.0] * 5, scores)) and math.isnan(_quiet(spearmanr, [2.0] * 5, scores)[0])
    assert glue.pearson(scores, scores) == pytest.approx(1.0)
    assert glue.pearson([1e200, 2e200, 3e200], [1, 2, 3]) == pytest.approx(1.0)  # no overflow
    with pytest.raises(ValueError, match="empty"):
        glue.accuracy([], [])
    with pytest.raises(ValueError, match="same length"):
        glue.accuracy([1, 0], [1])


DEGENERATE = {
    "constant predictions": ([2.0] * 6, [0.5, 2.0, 3.5, 1.0, 4.8, 0.0]),
    "constant labels": ([0.5, 2.0, 3.5, 1.0, 4.8, 0.0], [3.0] * 6),
    "both constant": ([1.0] * 4, [1.0] * 4),
    "two examples": ([0.1, 0.2], [5.0, 1.0]),
    "all tied but one": ([1.0, 1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]),
    "huge values": ([1e200, 2e200, 3e200], [1.0, 2.0, 3.0]),
}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("case", DEGENERATE)
def test_stsb_correlations_equal_scipy_at_degenerate_inputs(case):
    p, y = DEGENERATE[case]
    assert _same(glue.pearson(p, y), _quiet(pearsonr, p, y)[0])
    assert _same(glue.spearman(p, y), _quiet(spearmanr, p, y)[0])
    scores = glue.compute_metrics("stsb", p, y)
    assert _same(scores["pearson"], _quiet(pearsonr, p, y)[0]) and _same(scores["spearman"], _quiet(spearmanr, p, y)[0])


@pytest.mark.parametrize(("p", "y"), [([1] * 5, [0, 1, 1, 0, 1]), ([0, 1, 1, 0, 1], [1] * 5), ([0] * 4, [0] * 4),
                                      ([2, 2, 0], [0, 1, 2])])
def test_mcc_and_f1_equal_sklearn_at_degenerate_inputs(p, y):
    assert glue.matthews_corrcoef(p, y) == _quiet(sk_mcc, y, p)
    pb, yb = [v % 2 for v in p], [v % 2 for v in y]
    assert glue.f1(pb, yb) == _quiet(f1_score, yb, pb, zero_division=0.0)


def test_task_metrics_and_main_score():
    assert glue.compute_metrics("mrpc", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}
    assert set(glue.compute_metrics("STS-B", [0.1, 2.0, 4.0], [0.0, 2.5, 5.0])) == {"pearson", "spearman"}
    assert set(glue.compute_metrics("cola", [1, 0], [1, 0])) == {"mcc"}
    m = {"validation_matched": {"accuracy": 0.8}, "validation_mismatched": {"accuracy": 0.6}}
    assert glue.main_score(m) == pytest.approx(0.7)
    assert glue.main_score({"validation": {"accuracy": 0.9, "f1": 0.7}}) == pytest.approx(0.8)


def test_task_table():
    assert glue.GLUE_TASKS == ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
    assert glue.get_task("SST-2").name == "sst2" and glue.get_task("sts_b").name == "stsb"
    assert glue.get_task("RT-Sentiment").stand_in and not glue.get_task("qqp").stand_in
    assert glue.get_task("mnli").dev_splits == ("validation_matched", "validation_mismatched")
    assert glue.get_task("stsb").is_regression and glue.get_task("stsb").num_labels == 1
    with pytest.raises(ValueError, match=r"Unknown task 'sst5'.*cola"):
        glue.get_task("sst5")


# ============================================================================================ GLUE TSV fixtures


def _text(rng: random.Random, n: int = 5) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


MNLI_TRAIN = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
NLI = ("entailment", "neutral", "contradiction")


def write_glue(root: Path, n: int = 12, seed: int = 0) -> Path:
    """The GLUE distribution's layout, task by task, with its quirks (headerless CoLA, MRPC's byte-order mark,
    STS-B's ten columns, a malformed QQP row, MNLI's two dev files, text labels, unbalanced quotes)."""
    rng = random.Random(seed)

    def put(folder: str, name: str, lines: list[str]) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    for split in ("train", "dev"):
        cola = []
        for i in range(n):
            label = i % 2
            cola.append(f"gj04\t{label}\t{'' if label else '*'}\t{_text(rng)}")
        put("CoLA", f"{split}.tsv", cola)
        put("SST-2", f"{split}.tsv", ["sentence\tlabel"] + [f"{_text(rng)} \t{i % 2}" for i in range(n)])
        put("MRPC", f"{split}.tsv", ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
            + [f"{i % 2}\t{1000 + i}\t{2000 + i}\t{_text(rng)}\t{_text(rng)}" for i in range(n)])
        put("STS-B", f"{split}.tsv",
            ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
            + [f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{_text(rng)}\t{_text(rng)}\t"
               f"{5 * i / n:.3f}" for i in range(n)])
        qqp = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
        qqp += [f"{i}\t{2 * i}\t{2 * i + 1}\t{_text(rng)} ?\t{_text(rng)} ?\t{i % 2}" for i in range(n)]
        qqp.insert(3, f"{n}\t{2 * n}\t{2 * n + 1}\t{_text(rng)}")  # broken by a newline, as in the original
        put("QQP", f"{split}.tsv", qqp)
        put("QNLI", f"{split}.tsv", ["index\tquestion\tsentence\tlabel"]
            + [f"{i}\t{_text(rng)} ?\t{_text(rng)}\t{('entailment', 'not_entailment')[i % 2]}" for i in range(n)])
        put("RTE", f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel"]
            + [f"{i}\t{_text(rng)}\t{_text(rng)}\t{('entailment', 'not_entailment')[i % 2]}" for i in range(n)])
        put("WNLI", f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel"]
            + [f"{i}\t{_text(rng)}\t{_text(rng)}\t{i % 2}" for i in range(n)])
    for name, header in (("train.tsv", MNLI_TRAIN), ("dev_matched.tsv", MNLI_DEV), ("dev_mismatched.tsv", MNLI_DEV)):
        rows = [header]
        for i in range(n):
            gold = NLI[i % 3]
            votes = [gold] * (1 if header == MNLI_TRAIN else 5)
            s1 = f'"{_text(rng)}' if i == 1 else _text(rng)  # an unbalanced quote: quoting must be off
            rows.append("\t".join([str(i), str(100 + i), f"{100 + i}e", "fiction", "( x )", "( y )", "(ROOT x)",
                                   "(ROOT y)", s1, _text(rng), *votes, gold]))
        put("MNLI", name, rows)
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue_data"))


@pytest.mark.parametrize("task", glue.GLUE_TASKS)
def test_every_task_reads_its_tsv_layout(glue_dir, task):
    spec = glue.get_task(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the QQP warning has its own test
        for split in ("train", *spec.dev_splits):
            examples = glue.load_split(task, split, glue_dir)
            assert len(examples) == 12
            pair = spec.hf_columns != ("sentence",)
            assert all(len(e["texts"]) == (2 if pair else 1) for e in examples)
            assert all(isinstance(t, str) and t for e in examples for t in e["texts"])
            if spec.is_regression:
                assert [e["label"] for e in examples] == pytest.approx([5 * i / 12 for i in range(12)], abs=1e-3)
            else:
                assert {e["label"] for e in examples} == set(range(spec.num_labels))


def test_tsv_quirks(glue_dir):
    cola = glue.load_split("cola", "train", glue_dir)
    assert [e["label"] for e in cola[:4]] == [0, 1, 0, 1]  # headerless: the first line is data
    mrpc = glue.load_split("mrpc", "dev", glue_dir)  # byte-order mark before "Quality"
    assert [e["label"] for e in mrpc[:2]] == [0, 1]
    assert glue.load_split("sst2", "train", glue_dir)[0]["texts"][0].endswith(" ")  # text kept as written
    for split in ("validation_matched", "dev_mismatched", "matched"):
        mnli = glue.load_split("mnli", split, glue_dir)
        assert [e["label"] for e in mnli[:3]] == [0, 1, 2]  # entailment, neutral, contradiction (nyu-mll/glue order)
        assert mnli[1]["texts"][0].startswith('"')  # an unbalanced quote stays text and does not merge lines
    qnli = glue.load_split("qnli", "dev", glue_dir)
    assert [e["label"] for e in qnli[:2]] == [0, 1]  # text labels
    wnli = glue.load_split("wnli", "dev", glue_dir)
    assert [e["label"] for e in wnli[:2]] == [0, 1]  # WNLI's files hold ids
    task_folder = glue.load_split("rte", "dev", glue_dir / "RTE")  # the task folder itself also works
    assert len(task_folder) == 12
    (glue_dir / "lower").mkdir(exist_ok=True)
    (glue_dir / "lower" / "sst-2").mkdir(exist_ok=True)
    (glue_dir / "lower" / "sst-2" / "dev.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    assert len(glue.load_split("sst2", "dev", glue_dir / "lower")) == 1  # folder names matched case-insensitively


def test_qqp_malformed_rows_are_skipped_with_a_warning(glue_dir):
    for _ in range(2):  # also when the file comes from the cache
        with pytest.warns(UserWarning, match=r"QQP.*train.tsv: skipped 1 malformed row.*lines 4\)"):
            examples = glue.load_split("qqp", "train", glue_dir)
        assert len(examples) == 12


def test_mnli_and_test_split_names(glue_dir):
    with pytest.raises(ValueError, match="two dev splits"):
        glue.load_split("mnli", "dev", glue_dir)
    with pytest.raises(ValueError, match="test labels are not public"):
        glue.load_split("rte", "test", glue_dir)
    with pytest.raises(ValueError, match="no split 'extra'"):
        glue.load_split("rte", "extra", glue_dir)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_files_name_file_and_line(tmp_path):
    f = _write(tmp_path / "a" / "SST-2" / "train.tsv", "sentence\tlabel\nthe cat\t1\nthe dog\t0\textra\n")
    with pytest.raises(ValueError, match=rf"{f}, line 3: 3 tab-separated fields.*has 2"):
        glue.load_split("sst2", "train", tmp_path / "a")
    f = _write(tmp_path / "b" / "SST-2" / "train.tsv", "text\tlabel\nthe cat\t1\n")
    with pytest.raises(ValueError, match=rf"{f}, line 1: header .* lacks column\(s\) \['sentence'\]"):
        glue.load_split("sst2", "train", tmp_path / "b")
    f = _write(tmp_path / "c" / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                                   "1\ta\tb\tneutral\n")
    with pytest.raises(ValueError, match=rf"{f}, line 3: label 'neutral' is not in the RTE label set"):
        glue.load_split("rte", "dev", tmp_path / "c")
    f = _write(tmp_path / "d" / "SST-2" / "dev.tsv", "sentence\tlabel\nthe cat\t2\n")
    with pytest.raises(ValueError, match=rf"{f}, line 2: label '2' is not in the SST-2 label set"):
        glue.load_split("sst2", "dev", tmp_path / "d")
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    f = _write(tmp_path / "e" / "STS-B" / "dev.tsv", header + "0\tg\tf\ty\t0\tn\tn\ta\tb\tfour\n")
    with pytest.raises(ValueError, match=rf"{f}, line 2: score 'four' is not a number"):
        glue.load_split("stsb", "dev", tmp_path / "e")
    f = _write(tmp_path / "f" / "CoLA" / "dev.tsv", "gj04\t1\t\tthe cat sat\ngj04\t1\tthe dog\n")
    with pytest.raises(ValueError, match=rf"{f}, line 2: 3 tab-separated fields.*has 4"):
        glue.load_split("cola", "dev", tmp_path / "f")


def test_empty_and_missing_data(tmp_path):
    _write(tmp_path / "g" / "SST-2" / "dev.tsv", "sentence\tlabel\n")
    with pytest.raises(ValueError, match="validation split of SST-2 is empty"):
        glue.load_split("sst2", "dev", tmp_path / "g")
    with pytest.raises(FileNotFoundError, match=r"no QNLI/ \(or qnli/\) folder"):
        glue.load_split("qnli", "dev", tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        glue.load_split("sst2", "dev", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"train.tsv does not exist"):
        glue.load_split("sst2", "train", tmp_path / "g")


def test_rt_sentiment_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Rotten Tomatoes CSV"):
        glue.load_split("rt-sentiment", "train", tmp_path / "missing.csv.bz2")


def test_quora_paraphrase_real_format_fixture():
    from modernalbert.data.sources import fetch

    try:
        folder = fetch("allennlp-fixtures")
    except RuntimeError as err:
        pytest.skip(f"the allennlp fixtures could not be fetched from PyPI (offline?): {err}")
    path = folder / "quora_paraphrase.tsv"
    examples = glue.read_tsv(path, "qqp", layout=glue.QUORA_PARAPHRASE_LAYOUT)
    lines = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(examples) == len(lines) >= 3
    assert [e["label"] for e in examples] == [int(f[0]) for f in lines]
    assert examples[0]["texts"] == ("What should I do to avoid sleeping in class ?",
                                    "How do I not sleep in a boring class ?")
    with pytest.raises(ValueError, match=r"quora_paraphrase.tsv, line 1: header .* lacks column"):
        glue.read_tsv(path, "qqp")  # it is not in the GLUE QQP layout


# ============================================================================================ Hugging Face path


def _hf_dataset(task: str, n: int = 6, label_names=None):
    import datasets

    spec = glue.get_task(task)
    rng = random.Random(1)
    data = {c: [_text(rng) for _ in range(n)] for c in spec.hf_columns}
    if spec.is_regression:
        data["label"] = [float(i) for i in range(n)]
        return datasets.Dataset.from_dict(data)
    data["label"] = [i % spec.num_labels for i in range(n)]
    names = list(label_names or spec.labels)
    features = datasets.Features({**{c: datasets.Value("string") for c in spec.hf_columns},
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(data, features=features)


def test_hub_name_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        return _hf_dataset(config)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    mnli = glue.load_split("mnli", "validation_mismatched")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert [e["label"] for e in mnli[:3]] == [0, 1, 2] and len(mnli[0]["texts"]) == 2
    stsb = glue.load_split("stsb", "dev", "someone/glue-copy")
    assert calls[-1] == ("someone/glue-copy", "stsb", "validation")
    assert [e["label"] for e in stsb] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_hub_errors_are_clear(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"Could not load SST-2 split 'validation' from 'nyu-mll/glue'.*local"):
        glue.load_split("sst2", "validation")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _hf_dataset("rte", label_names=["yes", "no"]))
    with pytest.raises(ValueError, match=r"label names \['yes', 'no'\] differ"):
        glue.load_split("rte", "validation", "x/y")


def test_saved_datasets_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": _hf_dataset("qnli"), "validation": _hf_dataset("qnli", 4)})
    dd.save_to_disk(str(tmp_path / "qnli"))
    assert len(glue.load_split("qnli", "validation", tmp_path)) == 4
    test = _hf_dataset("qnli", 3).map(lambda r: {"label": -1}, features=None)
    datasets.DatasetDict({"train": _hf_dataset("qnli"), "validation": test}).save_to_disk(str(tmp_path / "x" / "qnli"))
    with pytest.raises(ValueError, match=r"label -1 .*cannot be scored"):
        glue.load_split("qnli", "validation", tmp_path / "x")


# ============================================================================================ features, grid


def pair_tokenizer() -> PreTrainedTokenizerFast:
    """The test vocabulary with BERT's pair template and token types."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def test_encode_features():
    examples = [{"texts": ("the cat sat", "a dog ran on the mat"), "label": 1},
                {"texts": ("the " * 40, "big " * 40), "label": 0}]
    feats = glue.encode(examples, pair_tokenizer(), max_length=16)
    assert set(feats[0]) == {"input_ids", "token_type_ids", "labels", "index"}
    assert feats[0]["token_type_ids"] == [0] * 5 + [1] * 7
    assert len(feats[1]["input_ids"]) == 16 and [f["index"] for f in feats] == [0, 1]
    single = glue.encode([{"texts": ("the cat",), "label": 0.5}], make_tokenizer(), max_length=16)
    assert set(single[0]) == {"input_ids", "labels", "index"} and single[0]["labels"] == 0.5


def test_subsample_is_fixed_and_ordered():
    items = [{"i": i} for i in range(100)]
    a, b = glue.subsample(items, 10), glue.subsample(items, 10)
    assert a == b and [x["i"] for x in a] == sorted(x["i"] for x in a)
    assert glue.subsample(items, None) == items and glue.subsample(items, 1000) == items


def test_parse_grid():
    grid = glue.parse_grid(["learning_rate=1e-5,3e-5", "batch-size=16,32", "max_steps=1e2"])
    assert grid == {"learning_rate": [1e-5, 3e-5], "batch_size": [16, 32], "max_steps": [100]}
    assert len(glue.grid_points(grid)) == 4 and glue.grid_points({}) == [{}]
    for bad, msg in (("lr=1", "Unknown grid field 'lr'"), ("seed=1,2", "--seeds"), ("batch_size=1.5", "valid int"),
                     ("learning_rate", "NAME=V1,V2"), ("warmup_ratio=2", "valid float")):
        with pytest.raises(ValueError, match=msg):
            glue.parse_grid([bad])


# ============================================================================================ models (tiny)




FAST = FinetuneConfig(batch_size=4, max_steps=3, eval_batch_size=8, learning_rate=1e-3, max_length=16, log_every=1)


@pytest.fixture(scope="module")
def sst2_model(tiny_model, glue_dir, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("sst2_run")
    result = glue.finetune_task(tiny_model, "sst2", FAST, data=str(glue_dir), output_dir=str(out))
    return str(out / "model"), result


def test_finetune_task_result_and_files(sst2_model, tiny_model):
    model_dir, result = sst2_model
    assert result["task"] == "sst2" and result["model"] == tiny_model and result["seed"] == 0
    assert set(result["metrics"]) == {"validation"} and set(result["metrics"]["validation"]) == {"accuracy"}
    assert result["main_score"] == result["metrics"]["validation"]["accuracy"]
    assert result["train_examples"] == 12 and result["steps"] == 3 and len(result["history"]) == 3
    assert result["model_dir"] == model_dir and not result["stand_in"]
    assert result["baselines"]["validation"]["majority_accuracy"] == 0.5
    saved = json.loads((Path(model_dir).parent / "results.json").read_text())
    assert saved["metrics"] == result["metrics"]
    config = json.loads((Path(model_dir) / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["finetuning_task"] == "sst2"


def test_evaluate_task_reproduces_the_dev_score(sst2_model, glue_dir):
    model_dir, result = sst2_model
    ev = glue.evaluate_task(model_dir, "sst2", data=str(glue_dir), batch_size=5, max_length=16)
    assert ev["metrics"]["validation"]["accuracy"] == pytest.approx(result["metrics"]["validation"]["accuracy"])
    assert ev["examples"] == {"validation": 12}


def test_label_mismatches_are_clear(sst2_model, tiny_model, glue_dir):
    model_dir, _ = sst2_model
    with pytest.raises(ValueError, match=r"num_labels=2 .*MNLI is 3 labels.*evaluate it on the task"):
        glue.evaluate_task(model_dir, "mnli", data=str(glue_dir))
    with pytest.raises(ValueError, match=r"labels \['negative', 'positive'\], not the QNLI labels"):
        glue.evaluate_task(model_dir, "qnli", data=str(glue_dir))
    with pytest.raises(ValueError, match=r"num_labels=2 .*STS-B is regression.*--init-from"):
        glue.finetune_task(model_dir, "stsb", FAST, data=str(glue_dir))
    with pytest.raises(ValueError, match="not a fine-tuned sequence classifier"):
        glue.evaluate_task(tiny_model, "sst2", data=str(glue_dir))
    with pytest.raises(FileNotFoundError, match="No model folder"):
        glue.evaluate_task(str(Path(tiny_model) / "missing"), "sst2", data=str(glue_dir))
    with pytest.raises(ValueError, match="Unknown task"):
        glue.finetune_task(tiny_model, "glue", FAST, data=str(glue_dir))


def test_init_from_keeps_the_encoder_with_a_new_head(sst2_model, tiny_model, glue_dir):
    from safetensors.torch import load_file

    model_dir, _ = sst2_model
    result = glue.finetune_task(tiny_model, "stsb", FAST, data=str(glue_dir), init_from=model_dir)
    assert set(result["metrics"]["validation"]) == {"pearson", "spearman"} and result["init_from"] == model_dir
    # same label count (RTE after SST-2): the classifier is still drawn afresh; the encoder comes from model_dir
    model = load_model(model_dir, "sequence-classification", num_labels=2, ignore_mismatched_sizes=True)
    glue.new_classifier(model, seed=0)
    saved = load_file(str(Path(model_dir) / "model.safetensors"))
    assert not torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert torch.equal(model.model.embeddings.tok_embeddings.weight, saved["model.embeddings.tok_embeddings.weight"])
    rte = glue.finetune_task(tiny_model, "rte", FAST, data=str(glue_dir), init_from=model_dir)
    assert set(rte["metrics"]["validation"]) == {"accuracy"}


def test_run_seeds_and_grid(tiny_model, glue_dir, tmp_path):
    res = glue.run_seeds(tiny_model, "mnli", FAST, [0, 1], data=str(glue_dir), output_dir=str(tmp_path / "s"),
                         save=False)
    assert res["seeds"] == [0, 1] and len(res["runs"]) == 2
    for split in ("validation_matched", "validation_mismatched"):
        stats = res["metrics"][split]["accuracy"]
        assert stats["mean"] == pytest.approx(np.mean(stats["values"]))
        assert stats["std"] == pytest.approx(np.std(stats["values"], ddof=1))
    assert (tmp_path / "s" / "seed-1" / "results.json").is_file() and not (tmp_path / "s" / "seed-1" / "model").exists()
    assert json.loads((tmp_path / "s" / "results.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="Seeds repeat"):
        glue.run_seeds(tiny_model, "mnli", FAST, [0, 0], data=str(glue_dir))
    grid = glue.run_grid(tiny_model, "cola", FAST, {"learning_rate": [1e-3, 1e-6]}, [0], data=str(glue_dir))
    assert len(grid["configs"]) == 2 and grid["best_params"] == grid["configs"][grid["best"]]["params"]
    scores = [c["main_score"]["mean"] for c in grid["configs"]]
    assert scores[grid["best"]] == max(scores)


def test_nan_scores_are_null_in_json_and_last_in_a_grid(tmp_path):
    path = glue.write_results(tmp_path / "r.json", {"pearson": float("nan"), "x": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"pearson": None, "x": [1.0, None]}


# ============================================================================================ CLI


def _cli(verb: str, argv: list[str]) -> int:
    """The suite wiring of ``modernalbert finetune|evaluate SUITE`` (see modernalbert.cli.suites)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="suite", required=True)
    for suite in ("glue", "rt-sentiment"):
        p = sub.add_parser(suite)
        (add_finetune_arguments if verb == "finetune" else add_evaluate_arguments)(p, suite)
        p.set_defaults(_suite_run=run_finetune if verb == "finetune" else run_evaluate)
    args = parser.parse_args(argv)
    return args._suite_run(args)


def test_cli_finetune_grid_and_evaluate(tiny_model, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = _cli("finetune", ["glue", tiny_model, "--task", "mrpc,SST-2", "--data", str(glue_dir), "--output-dir",
                           str(out), "--max-steps", "2", "--batch-size", "4", "--max-length", "16",
                           "--grid", "learning_rate=1e-3,1e-4", "--seeds", "0,1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| MRPC |" in printed and "| SST-2 |" in printed and "f1" in printed and "majority class" in printed
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["tasks"]) == ["mrpc", "sst2"] and summary["seeds"] == [0, 1]
    assert (out / "results.md").read_text().startswith("| task |")
    best = summary["tasks"]["mrpc"]["best"]
    for i in range(2):
        for seed in (0, 1):
            assert (out / "mrpc" / f"config-{i}" / f"seed-{seed}" / "model").is_dir() == (i == best)
    model_dir = out / "mrpc" / f"config-{best}" / "seed-0" / "model"
    rc = _cli("evaluate", ["glue", str(model_dir), "--task", "mrpc", "--data", str(glue_dir), "--output-dir",
                           str(tmp_path / "ev")])
    assert rc == 0 and "accuracy" in capsys.readouterr().out
    ev = json.loads((tmp_path / "ev" / "evaluate-mrpc-dev.json").read_text())
    ref = summary["tasks"]["mrpc"]["configs"][best]["runs"][0]["metrics"]
    assert ev["metrics"]["validation"] == pytest.approx(ref["validation"])


def test_cli_bad_input_is_one_line(tiny_model, glue_dir, tmp_path, capsys):
    from modernalbert.cli.main import main

    base = ["finetune", "glue", tiny_model, "--data", str(glue_dir), "--output-dir", str(tmp_path)]
    for extra, msg in ((["--task", "sst5"], "Unknown task 'sst5'"),
                       (["--task", "rt-sentiment"], "not a GLUE task"),
                       (["--task", "sst2", "--seeds", "a,b"], "--seeds"),
                       (["--task", "sst2", "--grid", "seed=1,2"], "--seeds"),
                       (["--task", "sst2", "--max-train-examples", "0"], "must be >= 1"),
                       (["--task", "sst2,cola", "--init-from", tiny_model], "applies to rte, mrpc, stsb")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    assert main(["evaluate", "glue", tiny_model, "--task", "rt-sentiment"]) == 2
    assert "not a GLUE task" in capsys.readouterr().err
    assert main(["evaluate", "glue", tiny_model, "--task", "rte", "--data", str(glue_dir), "--split", "test"]) == 2
    assert "test labels are not public" in capsys.readouterr().err
