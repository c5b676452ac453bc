"""`modernalbert merge` end to end on a saved model."""

import json

import torch

from modernalbert import ModernAlbertForMaskedLM
from modernalbert.cli.main import main
from modernalbert.model.loading import load_pretrained
from tests.conftest import padded_batch, randomize_adapters, small_config


def test_merge_command_writes_a_loadable_folded_model(tmp_path, capsys):
    model = ModernAlbertForMaskedLM(small_config())
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "in")
    assert main(["merge", str(tmp_path / "in"), str(tmp_path / "out"), "--form", "fold"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[0])["form"] == "fold"
    merged = load_pretrained(tmp_path / "out")
    assert type(merged) is ModernAlbertForMaskedLM and merged.config.ffn_variants == ["glu", "glu"]
    ids, mask = padded_batch(lengths=(5, 3))
    with torch.no_grad():
        assert merged(ids, attention_mask=mask).logits.isfinite().all()


def test_merge_command_reports_bad_input_in_one_line(tmp_path, capsys):
    ModernAlbertForMaskedLM(small_config(mol_groups=[])).save_pretrained(tmp_path / "plain")
    assert main(["merge", str(tmp_path / "plain"), str(tmp_path / "out")]) == 2
    assert "no MoL group" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "No model folder" in capsys.readouterr().err
    ModernAlbertForMaskedLM(small_config()).save_pretrained(tmp_path / "mol")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    code = main(["merge", str(tmp_path / "mol"), str(tmp_path / "out"), "--weights", "router", "--calibration",
                 str(empty)])
    assert code == 2 and "is empty" in capsys.readouterr().err


def test_an_invalid_saved_config_is_one_line_naming_the_field(tmp_path, capsys):
    ModernAlbertForMaskedLM(small_config()).save_pretrained(tmp_path / "in")
    path = tmp_path / "in" / "config.json"
    path.write_text(path.read_text().replace('"lora_rank": 4', '"lora_rank": 0'))
    assert main(["merge", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    assert "lora_rank" in capsys.readouterr().err
