"""Every writer gives 0644 files and 0755 folders under the usual umask (022), as save_pretrained's JSON files and
folders are, so another user or a serving process can read what we write; safetensors files included, which
safetensors 0.8 itself writes 0600 (ONNX graphs: tests/export/test_onnx.py; training checkpoints:
tests/training/test_checkpoint.py)."""

import bz2
import os
import stat
from pathlib import Path

from modernalbert import ModernAlbertForMaskedLM
from modernalbert_cli import main
from tests.conftest import make_tokenizer, randomize_adapters, small_config


def assert_readable_by_all(root: Path) -> None:
    """``root`` and everything below it: folders 0755, files 0644 (nothing owner-only, nothing temporary left)."""
    paths = [root, *root.rglob("*")]
    modes = {str(p.relative_to(root.parent)): stat.S_IMODE(os.stat(p).st_mode) for p in paths}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o755 if Path(root.parent, p).is_dir() else 0o644)}
    assert not wrong, f"written with other permissions than save_pretrained's: {wrong}"
    assert not [p for p in paths if p.name.endswith(".tmp")]


def test_model_folders_and_the_merge_command(tmp_path, umask_022):
    from modernalbert.model.loading import save_model

    model = ModernAlbertForMaskedLM(small_config())
    randomize_adapters(model)
    save_model(model, make_tokenizer(), tmp_path / "models" / "in")
    assert_readable_by_all(tmp_path / "models")
    assert main(["merge", str(tmp_path / "models" / "in"), str(tmp_path / "merged" / "out")]) == 0
    assert_readable_by_all(tmp_path / "merged")


def test_reports_and_json(tmp_path, umask_022):
    from modernalbert.evaluation.glue.run import write_results
    from modernalbert.utils.io import write_json, write_text

    write_results(tmp_path / "runs" / "glue" / "results.json", {"task": "sst2", "metrics": {}})
    write_json(tmp_path / "runs" / "report.json", {"a": 1})
    write_text(tmp_path / "runs" / "report.md", "# report\n")
    assert_readable_by_all(tmp_path / "runs")


def test_caches_and_derived_data(tmp_path, umask_022):
    from modernalbert.data.corpus import CorpusSpec
    from modernalbert.data.packing import PackedBlocks
    from modernalbert.data.rotten_tomatoes import write_review_plot_beir

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and the dog ran under the tree " * 20)
    spec = CorpusSpec.from_dict({"sources": [{"files": str(text)}]})
    PackedBlocks.build(spec, make_tokenizer(), 16, cache_root=tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache" / "packed").iterdir()] == [".safetensors"]
    assert_readable_by_all(tmp_path / "cache")
    csv = tmp_path / "rt.csv.bz2"
    rows = ["category,text,movie_name,has_plot_and_reviews", "plot,A plot.,M1,True", "fresh,Great fun.,M1,True",
            "plot,Another plot.,M2,True", "rotten,Dull.,M2,True"]
    csv.write_bytes(bz2.compress(("\n".join(rows) + "\n").encode()))
    write_review_plot_beir(tmp_path / "beir" / "rt", path=csv)
    assert_readable_by_all(tmp_path / "beir")
