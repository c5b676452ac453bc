"""The one rule for "local path or Hub id?", and the one error every loader gives for a missing local path."""

import pytest

from modernalbert.utils.hub import is_hub_id, resolve


@pytest.mark.parametrize(("name", "hub"), [
    ("bert-base-uncased", True), ("BeIR/scifact", True), ("nyu-mll/glue", True), ("org/model", True),
    ("./model", False), ("/abs/model", False), ("~/model", False), ("a/b/c", False), ("a\\b", False),
    ("", False), ("bad name", False),
])
def test_hub_ids_have_the_hubs_form(name, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(name) is hub


def test_an_owner_that_is_a_local_folder_makes_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("runs/model")  # nothing called runs/ here: it may be a Hub id
    (tmp_path / "runs").mkdir()
    assert not is_hub_id("runs/model")
    with pytest.raises(FileNotFoundError, match="No model folder at runs/model"):
        resolve("runs/model")
    (tmp_path / "runs" / "model").mkdir()
    assert resolve("runs/model") == "runs/model"
    assert not is_hub_id(tmp_path / "x")  # a PathLike is always a path


def test_every_loader_refuses_a_missing_local_folder_the_same_way(tmp_path, monkeypatch):
    from modernalbert.distill.init import init_from_teacher
    from modernalbert.evaluation.glue import check_model_labels
    from modernalbert.model.conversion import load_modernbert_weights
    from modernalbert.model.loading import load_config, load_model, load_pretrained, load_tokenizer
    from tests.conftest import small_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    loaders = [lambda p: load_model(p, "encoder"), load_tokenizer, load_pretrained, load_config,
               lambda p: init_from_teacher(p, small_config()), lambda p: check_model_labels(p, "sst2", fine_tuned=True),
               lambda p: load_modernbert_weights(__import__("modernalbert").ModernAlbertModel(small_config()), p)]
    for load in loaders:
        with pytest.raises(FileNotFoundError, match=r"No [a-zA-Z ]*folder at runs/model"):
            load("runs/model")
