"""The table reader: every format gives the same rows in file order, streamed with bounded memory, and every kind of
bad input is named (file, line or row, column) with its fix."""

import bz2
import csv
import gzip
import json
import lzma
import tracemalloc

import pytest

from modernalbert.data.tables import Table, TableError, cell_text, cell_value, read_table, table_format

ROWS = [
    {"text": "a plain one", "label": "pos"},
    {"text": 'with, a comma and "quotes"', "label": "neg"},
    {"text": "two\nlines", "label": "pos"},
    {"text": "tab\there ünïcødé", "label": "neg"},
]


def _write_csv(path, rows, delimiter=",", opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


# TSV (no quoting): stray and paired quotes are ordinary characters, as in GLUE's files.
TSV_ROWS = [
    {"text": "a plain one", "label": "pos"},
    {"text": '" the cat sat', "label": "neg"},
    {"text": 'with, a comma and "quotes" ünïcødé', "label": "pos"},
    {"text": 'the bird " flew', "label": "neg"},
]


def _write_tsv(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write("text\tlabel\n")
        fh.writelines(f"{r['text']}\t{r['label']}\n" for r in rows)
    return path


def test_tsv_has_no_quoting_so_a_stray_quote_cannot_join_rows(tmp_path):
    path = _write_tsv(tmp_path / "t.tsv", TSV_ROWS)
    assert list(Table(path)) == TSV_ROWS  # row i is line i + 2, quotes kept as written
    bad = tmp_path / "bad.tsv"
    bad.write_text('text\tlabel\n"two\nlines"\tpos\n', encoding="utf-8")  # a quoted newline: not TSV
    with pytest.raises(TableError, match=r"bad.tsv, line 2: 1 fields.*TSV has no quoting"):
        list(Table(bad))


def _write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _write_parquet(path, rows, row_group_size=2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.jsonl", "t.json", "t.parquet", "t.csv.gz", "t.tsv.bz2",
                                  "t.jsonl.xz"])
def test_every_format_reads_the_same_rows_in_order(tmp_path, name):
    path = tmp_path / name
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    if ".csv" in name:
        _write_csv(path, ROWS, ",", opener)
    elif ".tsv" in name:  # TSV cannot hold tabs or newlines in a field: those rows go through the other formats
        _write_tsv(path, TSV_ROWS, opener)
    elif ".parquet" in name:
        _write_parquet(path, ROWS)
    else:
        _write_jsonl(path, ROWS, opener)
    rows = TSV_ROWS if ".tsv" in name else ROWS
    table = Table(path)
    assert table.columns == ["text", "label"]
    assert list(table) == rows
    assert list(read_table(path, ["label"])) == [{"label": r["label"]} for r in rows]


def test_where_names_the_file_and_line_or_row(tmp_path):
    rows = list(Table(_write_csv(tmp_path / "t.csv", ROWS)).located_rows())
    # the record with a newline inside a quoted field ends on line 5: later lines count from there
    assert [w for w, _ in rows] == [f"{tmp_path / 't.csv'}, line {n}" for n in (2, 3, 5, 6)]
    rows = list(Table(_write_parquet(tmp_path / "t.parquet", ROWS)).located_rows())
    assert [w.rsplit(", ", 1)[1] for w, _ in rows] == ["row 1", "row 2", "row 3", "row 4"]


def test_datasets_folders_and_class_label_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"]),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X"]))})
    ds = datasets.Dataset.from_list([{"text": r["text"], "label": r["label"], "tags": ["O", "B-X"]} for r in ROWS],
                                    features=features)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "two"))
    one = Table(tmp_path / "one")
    assert one.format == "hf" and one.columns == ["text", "label", "tags"]
    assert [r["text"] for r in one.rows(["text"])] == [r["text"] for r in ROWS]
    assert [r["label"] for r in one] == [1, 0, 1, 0]  # ids, with the names in the feature
    assert one.label_names("label") == ["neg", "pos"] and one.label_names("tags") == ["O", "B-X"]
    assert one.label_names("text") is None and Table(tmp_path / "two", split="test").label_names("label")
    assert len(list(Table(tmp_path / "two", split="test"))) == 1
    with pytest.raises(TableError, match=r"holds the splits \['train', 'test'\]: say which split"):
        Table(tmp_path / "two").check_columns(["text"])
    with pytest.raises(TableError, match=r"not 'dev'"):
        Table(tmp_path / "two", split="dev").check_columns(["text"])


def test_conll_sentences_become_rows(tmp_path):
    path = tmp_path / "t.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n",
                    encoding="utf-8")
    assert list(Table(path).located_rows()) == [
        (f"{path}, line 3", {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}),
        (f"{path}, line 7", {"tokens": ["Peter"], "tags": ["B-PER"]}),
    ]
    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(TableError, match=r"t.conll, line 2: one field 'rejects'"):
        list(Table(path))


def test_rows_stream_with_bounded_memory_in_order(tmp_path):
    n = 60_000
    rows = [{"id": i, "text": f"review number {i} " + "word " * 20} for i in range(n)]
    files = [_write_jsonl(tmp_path / "big.jsonl", rows), _write_csv(tmp_path / "big.csv", rows)]
    del rows
    for path in files:
        size = path.stat().st_size
        assert size > 7_000_000
        tracemalloc.start()
        try:
            for i, row in enumerate(Table(path)):
                assert int(row["id"]) == i
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert i == n - 1
        assert peak < size / 20, f"{path.name}: peak {peak:,} bytes for a {size:,}-byte file"


def test_parquet_streams_batch_by_batch(tmp_path):
    import pyarrow as pa

    rows = [{"id": i, "text": "word " * 40} for i in range(40_000)]
    path = _write_parquet(tmp_path / "big.parquet", rows, row_group_size=None)  # one row group: read page by page
    del rows
    base, peak = pa.total_allocated_bytes(), 0
    for i, row in enumerate(Table(path)):  # pyarrow's own allocations (tracemalloc does not see them)
        assert row["id"] == i
        if i % 500 == 0:
            peak = max(peak, pa.total_allocated_bytes() - base)
    assert i == 39_999 and peak < 8_000_000 / 4  # the data is ~8 MB decoded


def test_rows_arrive_before_a_bad_line_later_in_the_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n', encoding="utf-8")
    rows = Table(path).rows()
    assert next(rows) == {"text": "ok"}  # streamed: the bad line is not read yet
    with pytest.raises(TableError, match=r"t.jsonl, line 2: not valid JSON .* Fix or drop the line"):
        next(rows)


def test_missing_column_names_file_column_and_the_columns_present(tmp_path):
    for path in (_write_csv(tmp_path / "t.csv", ROWS), _write_jsonl(tmp_path / "t.jsonl", ROWS),
                 _write_parquet(tmp_path / "t.parquet", ROWS)):
        with pytest.raises(TableError, match=rf"{path.name}: no column 'sentence'; the columns are \['text', "
                                             r"'label'\]\. Name the right column"):
            list(Table(path).rows(["sentence", "label"]))
    path = tmp_path / "later.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(TableError, match=r"later.jsonl, line 2: the object has no key 'label' \(its keys are "
                                         r"\['text'\]\); add it"):
        list(Table(path).rows(["text", "label"]))


@pytest.mark.parametrize("name, content, message", [
    ("t.csv", b"text,label\nfine,1\nshort\n",
     r"t.csv, line 3: 1 fields, the header has 2; quote a field that holds a comma"),
    ("t.csv", b"text,label\nfine,1\na,b,c\n", r"t.csv, line 3: 3 fields, the header has 2"),
    ("t.csv", b"text,label\nok,1\ncaf\xe9,1\n", r"t.csv, line 3 \(byte 19\): not UTF-8 text .* save the file as UTF-8"),
    ("t.csv", b"", r"t.csv is empty: it needs a header line"),
    ("t.csv", b"text,text\na,b\n", r"t.csv, line 1: the header names column\(s\) \['text'\] twice"),
    ("t.jsonl", b'{"text": "a"}\n{"text": "b",}\n',
     r"t.jsonl, line 2: not valid JSON \(.* at column \d+\)\. Fix or drop"),
    ("t.jsonl", b'[{"text": "a"},\n{"text": "b"}]\n',
     r"t.jsonl, line 1: not valid JSON .* one JSON array: write one object per line"),
    ("t.jsonl", b'{"text": "a"}\n["a", 1]\n', r"t.jsonl, line 2: a JSON list, not an object"),
    ("t.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', r"t.jsonl, line 2 \(byte 24\): not UTF-8"),
])
def test_bad_rows_are_named_with_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TableError, match=message):
        list(Table(path))


def test_bad_compressed_and_parquet_files_are_named(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"text,label\n" + b"row,1\n" * 1000)[:60])
    with pytest.raises(TableError, match=r"t.csv.gz: cannot decompress it .* damaged"):
        list(Table(path))
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(TableError, match=r"t.parquet is not a readable Parquet file"):
        list(Table(path))


def test_formats_and_missing_sources(tmp_path):
    assert table_format(tmp_path / "x.whatever", "csv") == "csv"
    assert table_format("owner/some-dataset") == "hf"
    with pytest.raises(FileNotFoundError, match=r"Table file .*missing\.csv does not exist"):
        Table(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv does not exist"):
        Table("missing.csv")  # a file name, never a Hub lookup
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(TableError, match=r"notes.txt: cannot tell the table format from the suffix \.txt; .* give "
                                         r"the format explicitly"):
        Table(tmp_path / "notes.txt")
    with pytest.raises(TableError, match=r"Unknown table format 'xlsx': choose one of \['csv'"):
        Table(tmp_path / "notes.txt", format="xlsx")


def test_a_hub_name_that_is_not_cached_fails_clearly_offline():
    with pytest.raises(TableError, match=r"Could not load the dataset modernalbert-test/no-such-dataset .* local "
                                         r"`datasets` cache \(offline, with HF_HUB_OFFLINE=1"):
        Table("modernalbert-test/no-such-dataset").check_columns(["text"])


def test_cell_checks_name_the_row_and_the_fix():
    where = "t.csv, line 7"
    assert cell_text({"text": "hi"}, "text", where) == "hi"
    with pytest.raises(TableError, match=r"t.csv, line 7: the text in column 'text' is empty; fill it in or drop"):
        cell_text({"text": "  "}, "text", where)
    with pytest.raises(TableError, match=r"t.csv, line 7: column 'text' holds a int \('5'\), not text"):
        cell_text({"text": 5}, "text", where)
    assert cell_value({"label": 0}, "label", where) == 0
    for empty in ("", None, float("nan")):
        with pytest.raises(TableError, match=r"t.csv, line 7: no value in column 'label'; fill it in or drop"):
            cell_value({"label": empty}, "label", where)
