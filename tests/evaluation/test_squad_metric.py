"""The SQuAD-v2 metric against numbers worked out by hand (official evaluate-v2.0.py semantics)."""

import pytest

from modernalbert.evaluation.squad import (
    SquadExample,
    exact_match,
    f1_score,
    normalize_answer,
    squad_v2_metric,
)

# Seven questions: five answerable (q1, q2, q3, q6, q7), two unanswerable (q4, q5).
GOLD = {
    "q1": ["The Eiffel Tower", "Eiffel Tower!"],
    "q2": ["Denver Broncos"],
    "q3": ["Saint Bernadette Soubirous", "Bernadette"],
    "q4": [],
    "q5": [],
    "q6": ["1882"],
    "q7": ["apple pie"],
}
PREDICTIONS = {
    "q1": "eiffel   tower",  # both golds normalise to "eiffel tower": EM 1, F1 1
    "q2": "the Broncos",  # "broncos" vs [denver, broncos]: P 1/1, R 1/2 -> F1 2/3; EM 0
    "q3": "Bernadette Soubirous",  # vs gold 1: P 2/2, R 2/3 -> F1 0.8; vs gold 2: P 1/2, R 1 -> 2/3; max 0.8; EM 0
    "q4": "",  # unanswerable, no answer given: EM 1, F1 1
    "q5": "a cat",  # unanswerable but answered: gold tokens [] vs [cat] -> EM 0, F1 0
    "q6": "",  # answerable but no answer given: EM 0, F1 0
    "q7": "An apple, the  PIE.",  # lower, no punctuation, no articles, one space: "apple pie" -> EM 1, F1 1
}
EXACT = {"q1": 1, "q2": 0, "q3": 0, "q4": 1, "q5": 0, "q6": 0, "q7": 1}
F1 = {"q1": 1.0, "q2": 2 / 3, "q3": 0.8, "q4": 1.0, "q5": 0.0, "q6": 0.0, "q7": 1.0}
NA_PROBS = {"q1": 0.1, "q2": 0.3, "q3": 0.2, "q4": 0.9, "q5": 0.6, "q6": 0.8, "q7": 0.05}


def test_normalisation_articles_punctuation_case_whitespace():
    assert normalize_answer("The  Eiffel\tTower!") == "eiffel tower"
    assert normalize_answer("An apple, the  PIE.") == "apple pie"
    # Articles go only as whole words ("another", "theme" stay); punctuation inside words is dropped.
    assert normalize_answer("another theme: a-ha") == "another theme aha"
    # Only ASCII punctuation is removed, as in the official script.
    assert normalize_answer("“quoted”") == "“quoted”"
    assert normalize_answer("the a an") == ""


def test_per_question_scores():
    for qid, pred in PREDICTIONS.items():
        golds = [g for g in GOLD[qid] if normalize_answer(g)] or [""]
        assert max(exact_match(g, pred) for g in golds) == EXACT[qid], qid
        assert max(f1_score(g, pred) for g in golds) == pytest.approx(F1[qid]), qid
    # Bags of tokens: "cat cat sat" vs "cat sat sat" share one cat and one sat -> P = R = 2/3 -> F1 2/3.
    assert f1_score("cat cat sat", "cat sat sat") == pytest.approx(2 / 3)
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0 and f1_score("", "x") == 0.0


def test_totals_and_breakdown_without_na_probs():
    m = squad_v2_metric(GOLD, PREDICTIONS)
    # exact: 1+0+0+1+0+0+1 = 3 of 7 -> 42.857; f1: 1 + 2/3 + 0.8 + 1 + 0 + 0 + 1 = 4.4667 of 7 -> 63.810
    assert m["exact"] == pytest.approx(300 / 7)
    assert m["f1"] == pytest.approx(100 * (3 + 2 / 3 + 0.8) / 7)
    assert m["total"] == 7
    # HasAns q1 q2 q3 q6 q7: exact 2/5 = 40; f1 (1 + 2/3 + 0.8 + 0 + 1) / 5 = 69.333
    assert (m["HasAns_exact"], m["HasAns_total"]) == (pytest.approx(40.0), 5)
    assert m["HasAns_f1"] == pytest.approx(100 * (2 + 2 / 3 + 0.8) / 5)
    # NoAns q4 q5: 1 of 2 for both
    assert (m["NoAns_exact"], m["NoAns_f1"], m["NoAns_total"]) == (pytest.approx(50.0), pytest.approx(50.0), 2)
    # All na_probs 0 (ties keep prediction order): start at 2 (both NoAns "right" when nothing is answered), then
    # q1 +1 -> 3 (best, thresh 0.0), q2 +0, q3 +0, q4 +0, q5 -1 -> 2, q6 +0, q7 +1 -> 3 (not better): 3/7.
    # F1: 2, q1 -> 3, q2 -> 3.667, q3 -> 4.467 (best), q4 -> 4.467, q5 -> 3.467, q6, q7 -> 4.467 (not better).
    assert m["best_exact"] == pytest.approx(300 / 7) and m["best_exact_thresh"] == 0.0
    assert m["best_f1"] == pytest.approx(100 * (3 + 2 / 3 + 0.8) / 7) and m["best_f1_thresh"] == 0.0
    assert list(m) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact",
                       "NoAns_f1", "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_best_thresholds_with_na_probs():
    m = squad_v2_metric(GOLD, PREDICTIONS, NA_PROBS)
    # The default threshold 1.0 changes nothing: same exact / f1 as without na_probs.
    assert m["exact"] == pytest.approx(300 / 7) and m["f1"] == pytest.approx(100 * (3 + 2 / 3 + 0.8) / 7)
    # Order by na_prob: q7 .05, q1 .1, q3 .2, q2 .3, q5 .6, q6 .8, q4 .9; start at 2 (NoAns count).
    # exact: q7 +1 -> 3, q1 +1 -> 4 (best, thresh .1), q3 +0, q2 +0, q5 -1 -> 3, q6 +0, q4 +0 -> 4/7 = 57.143
    assert m["best_exact"] == pytest.approx(400 / 7) and m["best_exact_thresh"] == 0.1
    # f1: q7 -> 3, q1 -> 4, q3 -> 4.8, q2 -> 5.4667 (best, thresh .3), q5 -> 4.4667, q6, q4 -> 5.4667/7 = 78.095
    assert m["best_f1"] == pytest.approx(100 * (4.8 + 2 / 3) / 7) and m["best_f1_thresh"] == 0.3


def test_na_threshold_turns_confident_questions_into_no_answer():
    m = squad_v2_metric(GOLD, PREDICTIONS, NA_PROBS, na_threshold=0.5)
    # na_prob > 0.5: q5 (.6) -> 1 (unanswerable), q6 (.8) -> 0 (answerable), q4 (.9) -> 1.
    # exact: 1+0+0+1+1+0+1 = 4/7; f1: 1 + 2/3 + 0.8 + 1 + 1 + 0 + 1 = 5.4667/7
    assert m["exact"] == pytest.approx(400 / 7)
    assert m["f1"] == pytest.approx(100 * (4.8 + 2 / 3) / 7)
    assert m["NoAns_exact"] == pytest.approx(100.0) and m["NoAns_f1"] == pytest.approx(100.0)
    assert m["HasAns_exact"] == pytest.approx(40.0)
    # The best-threshold search uses the raw scores, so it is the same as with threshold 1.0.
    assert m["best_exact"] == pytest.approx(400 / 7) and m["best_f1_thresh"] == 0.3


def test_best_threshold_keeps_zero_when_answering_nothing_is_best():
    # Two unanswerable questions, both answered: exact 0; predicting "" everywhere (threshold 0.0) gets 2/2.
    m = squad_v2_metric({"a": [], "b": []}, {"a": "x", "b": "y"}, {"a": 0.4, "b": 0.7})
    assert m["exact"] == 0.0 and m["NoAns_total"] == 2 and "HasAns_total" not in m
    assert m["best_exact"] == 100.0 and m["best_exact_thresh"] == 0.0
    assert m["best_f1"] == 100.0 and m["best_f1_thresh"] == 0.0


def test_gold_answers_that_normalise_to_nothing():
    # The question has an answer ("The"), so it counts as HasAns, but its gold set normalises to [""]: only an
    # empty prediction matches, as in the official script.
    m = squad_v2_metric({"x": ["The"]}, {"x": ""})
    assert m["exact"] == 100.0 and m["HasAns_total"] == 1 and "NoAns_total" not in m


def test_inputs_examples_and_official_json_agree():
    examples = [SquadExample(id=q, title="", context="c", question="?", answers=tuple(g),
                             answer_starts=tuple(0 for _ in g), is_impossible=not g) for q, g in GOLD.items()]
    official = {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in g]} for q, g in GOLD.items()
    ]}]}]}
    reference = squad_v2_metric(GOLD, PREDICTIONS, NA_PROBS)
    assert squad_v2_metric(examples, PREDICTIONS, NA_PROBS) == reference
    assert squad_v2_metric(official, PREDICTIONS, NA_PROBS) == reference
    # Predictions for questions outside the gold set are ignored.
    assert squad_v2_metric(GOLD, {**PREDICTIONS, "extra": "x"}, {**NA_PROBS, "extra": 0.0}) == reference


def test_missing_predictions_and_na_probs_are_errors():
    with pytest.raises(ValueError, match=r"no prediction.*'q7'"):
        squad_v2_metric(GOLD, {k: v for k, v in PREDICTIONS.items() if k != "q7"})
    with pytest.raises(ValueError, match="no na_prob"):
        squad_v2_metric(GOLD, PREDICTIONS, {"q1": 0.5})
    with pytest.raises(ValueError, match="no questions"):
        squad_v2_metric({}, {})
