"""Bad input, one case per kind and per reader: every case ends in a clear error (the message names the file, field
or value and says what to do) or in the right value, never in a traceback from deep inside a library.

Command-line cases run the command in-process (``modernalbert_cli.main``) and expect exit code 2, one line
``modernalbert <command>: error: ...`` (the last one on standard error, after any library log), no traceback and no
half-written output. Config keys (``ModernAlbertConfig(lora_rnak=8)``, recipe ``model.overrides`` typos, a
``config.json`` without ``lora_alpha``) belong to the typed model config and are tested with it.
"""

from __future__ import annotations

import bz2
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from modernalbert import ModernAlbertForMaskedLM, ModernAlbertForSequenceClassification
from modernalbert_cli import main
from tests.conftest import make_tokenizer, randomize_adapters, small_config

# ====================================================================================================== harness


@dataclass
class Refused:
    """``call()`` raises ``error`` whose message contains every one of ``names`` (file, field, value, fix)."""

    call: Callable[[], Any]
    error: type[BaseException]
    names: tuple[str, ...]


@dataclass
class CliRefused:
    """``modernalbert *argv`` exits with 2 and one error line containing ``names``; ``absent`` is not written."""

    argv: list[str]
    names: tuple[str, ...]
    absent: Path | None = None


@dataclass
class Right:
    """``call()`` returns a value that ``check`` accepts (asserts)."""

    call: Callable[[], Any]
    check: Callable[[Any], None]


CASES: dict[str, Callable[[Path], Refused | CliRefused | Right]] = {}


def case(name: str) -> Callable:
    def register(build: Callable[[Path], Refused | CliRefused | Right]) -> Callable:
        CASES[name] = build
        return build

    return register


# ================================================================================================ checkpoints


def _saved(folder: Path, cls: type = ModernAlbertForMaskedLM, **overrides: Any) -> Path:
    model = cls(small_config(**overrides))
    randomize_adapters(model)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def _edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _without(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors.pop(key)


@case("checkpoint: a missing tensor (library)")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _edit_weights(_saved(tmp / "m"), _without("model.groups.1.mlp.lora_A1"))
    return Refused(lambda: load_pretrained(folder), ValueError,
                   (str(folder / "model.safetensors"), "model.groups.1.mlp.lora_A1", "save_pretrained"))


@case("checkpoint: a missing tensor (evaluation loaders, every head)")
def _(tmp: Path):
    from modernalbert.model.loading import load_model

    folder = _edit_weights(_saved(tmp / "m"), _without("model.embeddings.proj.weight"))

    def every_head():  # what GLUE, SQuAD and BEIR open a model folder with
        for head in ("sequence-classification", "question-answering", "encoder"):
            with pytest.raises(ValueError, match=r"lacks tensor\(s\) \[.*embeddings\.proj\.weight"):
                load_model(folder, head)
        return load_model(folder, "masked-lm")

    return Refused(every_head, ValueError, ("model.safetensors", "embeddings.proj.weight", "save_pretrained"))


@case("checkpoint: a missing tensor (merge command)")
def _(tmp: Path):
    folder = _edit_weights(_saved(tmp / "m"), _without("model.groups.1.mlp.lora_B2"))
    return CliRefused(["merge", str(folder), str(tmp / "out")], ("model.safetensors", "lora_B2", "save_pretrained"),
                      absent=tmp / "out")


@case("checkpoint: a partial head of the checkpoint's own class")
def _(tmp: Path):
    from modernalbert.model.loading import load_model

    folder = _edit_weights(_saved(tmp / "m", ModernAlbertForSequenceClassification, num_labels=3),
                           _without("classifier.bias"))
    return Refused(lambda: load_model(folder, "sequence-classification"), ValueError, ("classifier.bias",))


@case("checkpoint: a new task head is legitimate (MaskedLM folder opened for classification)")
def _(tmp: Path):
    from modernalbert.model.loading import load_model

    folder = _saved(tmp / "m")
    saved = load_file(folder / "model.safetensors")

    def check(model):
        assert type(model) is ModernAlbertForSequenceClassification
        torch.testing.assert_close(model.model.groups[1].mlp.lora_B1, saved["model.groups.1.mlp.lora_B1"])

    return Right(lambda: load_model(folder, "sequence-classification", num_labels=3), check)


@case("checkpoint: tied weights are not missing")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _saved(tmp / "m")
    assert "decoder.weight" not in load_file(folder / "model.safetensors")  # tied: never saved

    def check(model):
        assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight

    return Right(lambda: load_pretrained(folder), check)


@case("checkpoint: tensors of another shape than config.json says")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _saved(tmp / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "lora_rank": 8}))
    return Refused(lambda: load_pretrained(folder), ValueError,
                   ("model.groups.1.mlp.lora_A1: [4, 4, 64] in the file, [4, 8, 64] from config.json",))


@case("checkpoint: tensors the config has no place for")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _saved(tmp / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mol_groups": [], "ffn_variants": ["glu", "glu"]}))
    return Refused(lambda: load_pretrained(folder), ValueError, ("model.groups.1.mlp.lora_A1", "has no place for"))


@case("checkpoint: a truncated weights file (merge command)")
def _(tmp: Path):
    folder = _saved(tmp / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return CliRefused(["merge", str(folder), str(tmp / "out")],
                      (str(folder / "model.safetensors"), "not a readable safetensors file", "damaged or truncated"),
                      absent=tmp / "out")


@case("checkpoint: a garbage weights file (library)")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _saved(tmp / "m")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
    return Refused(lambda: load_pretrained(folder), ValueError, (str(folder / "model.safetensors"), "save the model"))


@case("checkpoint: a folder without weights")
def _(tmp: Path):
    from modernalbert.model.loading import load_pretrained

    folder = _saved(tmp / "m")
    (folder / "model.safetensors").unlink()
    return Refused(lambda: load_pretrained(folder), FileNotFoundError, ("holds no weights", "save_pretrained"))


# ====================================================================================================== merge


@case("merge: NaN experts (command)")
def _(tmp: Path):
    def poison(tensors):
        tensors["model.groups.1.mlp.lora_B1"][0, 0, 0] = float("nan")

    folder = _edit_weights(_saved(tmp / "m"), poison)
    return CliRefused(["merge", str(folder), str(tmp / "out"), "--form", "svd", "--rank", "4"],
                      ("group 1", "model.groups.1.mlp.lora_B1", "non-finite", "Nothing was merged"),
                      absent=tmp / "out")


@case("merge: inf in the group's own FFN weight, low-rank form (library)")
def _(tmp: Path):
    from modernalbert.export import merge_experts

    model = ModernAlbertForMaskedLM(small_config())
    with torch.no_grad():
        model.model.groups[1].mlp.Wo.weight[0, 0] = float("inf")
    return Refused(lambda: merge_experts(model, form="lowrank"), ValueError,
                   ("group 1", "model.groups.1.mlp.Wo.weight", "non-finite"))


@case("merge: --form svd without --rank")
def _(tmp: Path):
    folder = _saved(tmp / "m")
    return CliRefused(["merge", str(folder), str(tmp / "out"), "--form", "svd"], ("--rank", "--form lowrank"),
                      absent=tmp / "out")


@case("merge: calibration text that is not UTF-8")
def _(tmp: Path):
    folder = _saved(tmp / "m")
    text = tmp / "calibration.txt"
    text.write_bytes(b"the cat sat\nthe d\xf6g ran\n")  # 0xf6 at byte 12 + 5
    return CliRefused(["merge", str(folder), str(tmp / "out"), "--weights", "router", "--calibration", str(text)],
                      (str(text), "line 2 (byte 17)", "not UTF-8", "save the file as UTF-8"), absent=tmp / "out")


@case("merge: an ablation recipe with an SVD merge without rank")
def _(tmp: Path):
    from modernalbert.experiments.ablation.recipe import AblationRecipe

    recipe = Path(__file__).parents[1] / "recipes" / "ablation-cpu.yaml"
    override = "merge.options=[{weights: uniform, space: deltas, form: svd}]"
    return Refused(lambda: AblationRecipe.load(recipe, [override]), ValueError,
                   ("merge.options[0]", "form svd needs a rank"))


# ======================================================================================================= ONNX


def _tiny_graph(path: Path) -> Path:
    """A valid one-MatMul ONNX graph (no export needed to test what happens around the quantiser)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@case("onnx: an int8 graph the quantiser writes invalid is refused before it is written")
def _(tmp: Path):
    import onnx
    import onnxruntime.quantization as quantization

    from modernalbert.export.onnx import OnnxExportError, quantize_int8

    fp32 = _tiny_graph(tmp / "model.onnx")

    def duplicate_definition(source, target, **kwargs):  # what ONNX Runtime 1.32 wrote for unfolded weights
        model = onnx.load(str(source))
        node = model.graph.node[0]
        model.graph.node.extend([onnx.helper.make_node("Identity", ["x"], [node.output[0]])])
        onnx.save(model, str(target))

    def refuse():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(quantization, "quantize_dynamic", duplicate_definition)
            try:
                quantize_int8(fp32, tmp / "model.int8.onnx")
            finally:
                assert sorted(p.name for p in tmp.iterdir()) == ["model.onnx"]  # nothing written, nothing left

    return Refused(refuse, OnnxExportError, ("model.int8.onnx", "is invalid", "nothing was written"))


@case("onnx: export of a damaged checkpoint (command)")
def _(tmp: Path):
    folder = _edit_weights(_saved(tmp / "m"), _without("model.final_norm.weight"))
    return CliRefused(["export", "onnx", str(folder), str(tmp / "out")],
                      ("model.safetensors", "model.final_norm.weight"), absent=tmp / "out")


@case("onnx: OUT is a file (command)")
def _(tmp: Path):
    (tmp / "out").write_text("")
    return CliRefused(["export", "onnx", str(_saved(tmp / "m")), str(tmp / "out")], ("OUT must be a folder",))


@case("onnx: an opset the exporter does not write (command)")
def _(tmp: Path):
    return CliRefused(["export", "onnx", str(_saved(tmp / "m")), str(tmp / "out"), "--opset", "13"],
                      ("opset 13", ">= 18"), absent=tmp / "out")


@case("onnx: an input dtype that is not an integer type (library)")
def _(tmp: Path):
    from modernalbert.export import export_onnx

    return Refused(lambda: export_onnx(ModernAlbertForMaskedLM(small_config()), tmp / "m.onnx", input_dtype="float32"),
                   ValueError, ("input_dtype='float32'", "int64", "int32"))


# ======================================================================================================= GLUE


_COLA = datasets.Features({"sentence": datasets.Value("string"),
                           "label": datasets.ClassLabel(names=["unacceptable", "acceptable"]),
                           "idx": datasets.Value("int32")})
_MNLI = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                           "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                           "idx": datasets.Value("int32")})


def _hub_glue(root: Path) -> Path:
    """A local copy of nyu-mll/glue in the Hub's layout (cola, mnli), with the Hub's columns and features."""
    cola = {"sentence": ["The cat sat.", "Cat the sat.", "It rains."], "label": [1, 0, 1], "idx": [0, 1, 2]}
    for split in ("train", "validation", "test"):
        rows = {**cola, "label": [-1] * 3} if split == "test" else cola
        datasets.Dataset.from_dict(rows, features=_COLA).to_parquet(
            str(root / "cola" / f"{split}-00000-of-00001.parquet"))
    mnli = {"premise": ["A man sleeps.", "A dog runs."], "hypothesis": ["A man rests.", "A cat sleeps."],
            "label": [0, 2], "idx": [0, 1]}
    for split in ("train", "validation_matched", "validation_mismatched"):
        datasets.Dataset.from_dict(mnli, features=_MNLI).to_parquet(
            str(root / "mnli" / f"{split}-00000-of-00001.parquet"))
    return root


@case("glue parquet: a local copy of nyu-mll/glue reads as the Hub's splits")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    root = _hub_glue(tmp / "glue")

    def read():
        return (load_split("cola", "validation", root), load_split("mnli", "validation_matched", root),
                load_split("cola", "train", root / "cola"))

    def check(splits):
        cola, mnli, from_config_folder = splits
        assert cola == from_config_folder == [{"texts": ("The cat sat.",), "label": 1},
                                               {"texts": ("Cat the sat.",), "label": 0},
                                               {"texts": ("It rains.",), "label": 1}]
        assert mnli[1] == {"texts": ("A dog runs.", "A cat sleeps."), "label": 2}

    return Right(read, check)


@case("glue parquet: one file given as the data")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    file = _hub_glue(tmp / "glue") / "cola" / "validation-00000-of-00001.parquet"
    return Right(lambda: load_split("cola", "dev", file), lambda rows: [r["label"] for r in rows] == [1, 0, 1])


@case("glue parquet: one file of another split")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    file = _hub_glue(tmp / "glue") / "cola" / "validation-00000-of-00001.parquet"
    return Refused(lambda: load_split("cola", "train", file), ValueError,
                   (str(file), "holds the validation split", "the train split is asked for"))


@case("glue parquet: a file that is not parquet")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    (tmp / "cola").mkdir()
    file = tmp / "cola" / "validation-00000-of-00001.parquet"
    file.write_text("sentence,label\n")
    return Refused(lambda: load_split("cola", "validation", tmp), ValueError,
                   (str(file), "not a readable parquet file", "copy it again"))


@case("glue parquet: label names in another order")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    swapped = _COLA.copy()
    swapped["label"] = datasets.ClassLabel(names=["acceptable", "unacceptable"])
    (tmp / "cola").mkdir()
    datasets.Dataset.from_dict({"sentence": ["x"], "label": [0], "idx": [0]}, features=swapped).to_parquet(
        str(tmp / "cola" / "validation-00000-of-00001.parquet"))
    return Refused(lambda: load_split("cola", "validation", tmp), ValueError,
                   ("label names ['acceptable', 'unacceptable']", "relabel"))


@case("glue tsv: a byte that is not UTF-8")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    (tmp / "SST-2").mkdir()
    data = b"sentence\tlabel\na fine film\t1\na na\xefve plot\t0\n"
    (tmp / "SST-2" / "dev.tsv").write_bytes(data)
    return Refused(lambda: load_split("sst2", "dev", tmp), ValueError,
                   (str(tmp / "SST-2" / "dev.tsv"), f"line 3 (byte {data.index(0xEF)})", "not UTF-8",
                    "save the file as UTF-8"))


@case("glue tsv: a row with a missing field")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    (tmp / "RTE").mkdir()
    (tmp / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tA.\tB.\n")
    return Refused(lambda: load_split("rte", "dev", tmp), ValueError, (str(tmp / "RTE" / "dev.tsv"), "line 3"))


# ====================================================================================================== SQuAD


_SQUAD = datasets.Features({"id": datasets.Value("string"), "title": datasets.Value("string"),
                            "context": datasets.Value("string"), "question": datasets.Value("string"),
                            "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                          "answer_start": datasets.Value("int32")})})


def _hub_squad(root: Path) -> Path:
    """A local copy of rajpurkar/squad_v2 in the Hub's layout, with the Hub's columns and features."""
    rows = {"id": ["q1", "q2"], "title": ["Paris", "Paris"], "context": ["Paris is in France."] * 2,
            "question": ["Where is Paris?", "Who built Paris?"],
            "answers": [{"text": ["in France"], "answer_start": [9]}, {"text": [], "answer_start": []}]}
    datasets.Dataset.from_dict(rows, features=_SQUAD).to_parquet(
        str(root / "squad_v2" / "validation-00000-of-00001.parquet"))
    return root


@case("squad parquet: a local copy of rajpurkar/squad_v2")
def _(tmp: Path):
    from modernalbert.evaluation.squad import read_squad

    root = _hub_squad(tmp / "hub")

    def check(examples):
        assert [(e.id, e.answers, e.answer_starts, e.is_impossible) for e in examples] == [
            ("q1", ("in France",), (9,), False), ("q2", (), (), True)]

    def read():
        examples = read_squad(root)  # the split defaults to validation, as for the Hub name
        assert read_squad(root / "squad_v2" / "validation-00000-of-00001.parquet") == examples  # the file alone
        return examples

    return Right(read, check)


@case("squad parquet: a copy without the split asked for")
def _(tmp: Path):
    from modernalbert.evaluation.squad import read_squad

    root = _hub_squad(tmp / "hub")
    return Refused(lambda: read_squad(root, split="train"), ValueError, ("train-*.parquet", "rajpurkar/squad_v2"))


@case("squad json: a byte that is not UTF-8")
def _(tmp: Path):
    from modernalbert.evaluation.squad import read_squad

    path = tmp / "dev-v2.0.json"
    data = b'{"version": "v2.0",\n "data": [{"title": "Caf\xe9"}]}'
    path.write_bytes(data)
    return Refused(lambda: read_squad(path), ValueError, (str(path), f"line 2 (byte {data.index(0xE9)})", "not UTF-8"))


@case("squad jsonl: a line that is not JSON")
def _(tmp: Path):
    from modernalbert.evaluation.squad import read_squad

    path = tmp / "dev.jsonl"
    path.write_text('{"id": "q1", "context": "c", "question": "q", "answers": {"text": [], "answer_start": []}}\n'
                    '{"id": "q2", "context": \n')
    return Refused(lambda: read_squad(path), ValueError, (str(path), "line 2", "not valid JSON"))


# ======================================================================================================= BEIR


def _beir(root: Path, corpus: bytes, queries: bytes, qrels: bytes) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    return root


_CORPUS = b'{"_id": "d1", "title": "", "text": "a plot"}\n{"_id": "d2", "title": "", "text": "another"}\n'
_QUERIES = b'{"_id": "q1", "text": "a review"}\n{"_id": "q2", "text": "a second"}\n'
_QRELS = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


@case("beir queries: a query id used twice (command)")
def _(tmp: Path):
    folder = _beir(tmp / "b", _CORPUS, _QUERIES + b'{"_id": "q1", "text": "another text"}\n', _QRELS)
    return CliRefused(["evaluate", "beir", str(tmp / "no-model-needed"), "--data", str(folder),
                       "--output-dir", str(tmp / "out")],
                      (f"{folder / 'queries.jsonl'}, line 3", "duplicate query id 'q1'", "line 1", "unique"),
                      absent=tmp / "out")


@case("beir corpus: a document id used twice")
def _(tmp: Path):
    from modernalbert.evaluation.beir import load_beir

    folder = _beir(tmp / "b", _CORPUS + b'{"_id": "d2", "text": "x"}\n', _QUERIES, _QRELS)
    return Refused(lambda: load_beir(folder), ValueError,
                   (f"{folder / 'corpus.jsonl'}, line 3", "duplicate document id 'd2'", "unique"))


@case("beir qrels: one pair judged twice with different grades")
def _(tmp: Path):
    from modernalbert.evaluation.beir import load_beir

    folder = _beir(tmp / "b", _CORPUS, _QUERIES, _QRELS + b"q1\td1\t2\n")
    return Refused(lambda: load_beir(folder), ValueError,
                   (f"{folder / 'qrels' / 'test.tsv'}, line 4", "judged twice with different scores"))


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_files_that_are_not_utf8_name_file_line_and_byte(tmp_path, file):
    from modernalbert.evaluation.beir import load_beir

    parts = {"corpus.jsonl": _CORPUS, "queries.jsonl": _QUERIES, "qrels/test.tsv": _QRELS}
    parts[file] = parts[file].replace(b"1", b"\xe0", 1)  # in the first id
    folder = _beir(tmp_path / "b", parts["corpus.jsonl"], parts["queries.jsonl"], parts["qrels/test.tsv"])
    offset = parts[file].index(b"\xe0")
    line = parts[file].count(b"\n", 0, offset) + 1
    with pytest.raises(ValueError, match=rf"{file}, line {line} \(byte {offset}\): not UTF-8 text"):
        load_beir(folder)


@case("beir metrics: a judged query missing from the run (BEIR's semantics, and trec_eval -c)")
def _(tmp: Path):
    import pytrec_eval

    from modernalbert.evaluation.beir import retrieval_metrics

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 0.9, "d2": 0.5}, "q2": {"d1": 0.8, "d2": 0.7}}  # q3 judged, never retrieved
    direct = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)  # leaves q3 out

    def check(pair):
        beir, trec = pair
        assert beir["semantics"] == "beir" and beir["num_queries"] == 2
        assert beir["ndcg_cut_10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in direct.values()]))
        assert trec["semantics"] == "trec_eval" and trec["ndcg_cut_10"] == pytest.approx(beir["ndcg_cut_10"] * 2 / 3)

    return Right(lambda: (retrieval_metrics(qrels, run), retrieval_metrics(qrels, run, semantics="trec_eval")),
                 check)


# ================================================================================================ RT and text


def _rt_csv(path: Path, body: bytes) -> Path:
    path.write_bytes(bz2.compress(b"category,text,movie_name,has_plot_and_reviews\n" + body))
    return path


@case("rt data: a byte that is not UTF-8")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    path = _rt_csv(tmp / "rt.csv.bz2", b"fresh,Great fun.,M1,True\nrotten,Na\xefve.,M2,True\n")
    return Refused(lambda: load_split("rt-sentiment", "train", path), ValueError,
                   (str(path), "line 3", "not UTF-8"))


@case("rt data: an unknown category")
def _(tmp: Path):
    from modernalbert.evaluation.glue import load_split

    path = _rt_csv(tmp / "rt.csv.bz2", b"fresh,Great fun.,M1,True\nsplendid,Fine.,M2,True\n")
    return Refused(lambda: load_split("rt-sentiment", "train", path), ValueError,
                   (str(path), "line 3", "'splendid' is not fresh, rotten or plot"))


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_text_builder_names_the_file_that_is_not_utf8(tmp_path, streaming):
    from modernalbert.data.corpus import HFDataset

    good, bad = tmp_path / "a.txt", tmp_path / "b.txt"
    good.write_text("one line\nanother line\n")
    bad.write_bytes(b"fine\nnot \xfe fine\n")
    source = HFDataset("text", data_files=(str(good), str(bad)), streaming=streaming)
    with pytest.raises(ValueError, match=r"b\.txt, line 2 \(byte 9\): not UTF-8 text"):
        list(source.documents())


# ==================================================================================================== recipes


@case("recipes: an unknown key in a pretraining recipe section")
def _(tmp: Path):
    from modernalbert.training.recipe import Recipe

    recipe = Path(__file__).parents[1] / "recipes" / "cpu-smoke.yaml"
    return Refused(lambda: Recipe.load(recipe, ["train.stpes=5"]), ValueError, ("stpes", "train"))


@case("recipes: a recipe that is not YAML (command)")
def _(tmp: Path):
    path = tmp / "recipe.yaml"
    path.write_text("model: {preset: test\n")
    return CliRefused(["experiment", "ablation", str(path)], (str(path), "not valid YAML"))


@case("recipes: an unknown top-level key in an ablation recipe (command)")
def _(tmp: Path):
    recipe = Path(__file__).parents[1] / "recipes" / "ablation-cpu.yaml"
    return CliRefused(["experiment", "ablation", str(recipe), "seedz=[0]", "--output-dir", str(tmp / "out")],
                      ("seedz", "ablation recipe"), absent=tmp / "out")


def test_every_kind_has_cases():
    kinds = {name.split(":")[0].split(" ")[0] for name in CASES}
    assert kinds == {"checkpoint", "merge", "onnx", "glue", "squad", "beir", "rt", "recipes"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys):
    expected = CASES[name](tmp_path)
    if isinstance(expected, Right):
        expected.check(expected.call())
    elif isinstance(expected, Refused):
        with pytest.raises(expected.error) as info:
            expected.call()
        for part in expected.names:
            assert part in str(info.value), f"{part!r} not in: {info.value}"
    else:
        capsys.readouterr()
        code = main(expected.argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("modernalbert ")]
        assert code == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
        assert lines[0].startswith(f"modernalbert {expected.argv[0]}: error: ")
        for part in expected.names:
            assert part in lines[0], f"{part!r} not in: {lines[0]}"
        if expected.absent is not None:
            assert not expected.absent.exists()
