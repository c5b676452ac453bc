"""``predict`` and ``encode`` over a file of any size: read (:mod:`modernalbert.data.tables`), tokenise a chunk,
bucket it by length, run the batches (:mod:`.runners`: PyTorch or ONNX), restore the input order
(:mod:`.streaming`), and write (:mod:`.writers`), one chunk at a time, with a progress bar.

Memory holds one chunk (``chunk_size`` rows, their tokens and outputs) whatever the file's size. Row i of the output
belongs to row i of the input.

Example:
    >>> from modernalbert.inference import encode, predict
    >>> predict("my-classifier", "reviews.csv", "predictions.jsonl", text_column="review")  # doctest: +SKIP
    >>> encode("my-encoder-onnx", "corpus.parquet", "embeddings.npy")                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..data.tables import Table, TableError, cell_text
from ..model.batching import pad_batch
from .runners import Runner, load_runner
from .streaming import DEFAULT_CHUNK, DEFAULT_MAX_TOKENS, bucketed_in_order, chunks
from .tasks import entity_spans, label_names, sequence_record, task_of
from .writers import EMBEDDING_FORMATS, RECORD_FORMATS, embedding_writer, output_format, record_writer


def _rows(source: str | os.PathLike, text_column: str, text_pair_column: str | None, *, format: str | None,
          split: str | None) -> Iterator[tuple[str, str, str | None]]:
    """``(where, text, pair)`` of every row, a blank or non-text cell refused naming the row and column."""
    columns = [text_column, *([text_pair_column] if text_pair_column else [])]
    for where, row in Table(source, format=format, split=split).located_rows(columns):
        pair = cell_text(row, text_pair_column, where) if text_pair_column else None
        yield where, cell_text(row, text_column, where), pair


def _encoded(rows: Iterator[tuple[str, str, str | None]], tokenizer: Any, max_length: int, chunk_size: int,
             offsets: bool) -> Iterator[dict[str, Any]]:
    """Rows tokenised a chunk at a time (one fast-tokenizer call per chunk), yielded one by one."""
    for chunk in chunks(rows, chunk_size):
        texts = [t for _, t, _ in chunk]
        pairs = [p for _, _, p in chunk] if chunk[0][2] is not None else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_offsets_mapping=offsets)
        for i, (where, text, _) in enumerate(chunk):
            yield {"where": where, "text": text, "ids": enc["input_ids"][i],
                   "offsets": enc["offset_mapping"][i] if offsets else None}


def _progress(total_desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc=total_desc, unit=" rows", disable=not show, dynamic_ncols=True)


def _setup(model: str | os.PathLike | Runner, output: str, graph: str | None, pooling: str, threads: int | None
           ) -> tuple[Runner, Any]:
    from ..model.loading import load_tokenizer

    if isinstance(model, Runner):
        raise ValueError("Pass the model folder (its tokenizer is read from it), not a Runner.")
    runner = load_runner(model, output, graph=graph, pooling=pooling, threads=threads)
    return runner, load_tokenizer(model)


def _checked_max_length(runner: Runner, max_length: int | None) -> int:
    """``max_length``, or the model's ``max_position_embeddings``; a deployment graph cannot go beyond that (its
    RotaryEmbedding caches hold that many positions), so a longer limit is refused there rather than crashing."""
    limit = runner.config.max_position_embeddings
    if max_length is None:
        return limit
    if max_length > limit and "deploy" in runner.kind:
        raise ValueError(f"--max-length {max_length} exceeds the model's max_position_embeddings ({limit}), the most "
                         f"the deployment graph ({runner.kind}) can take: use --max-length {limit} or less, or the "
                         "PyTorch model / `--graph model.onnx`.")
    return max_length


def _refuse_overwriting_input(source: str | os.PathLike, output: str | os.PathLike) -> None:
    src = Path(source)
    if src.is_file() and src.resolve() == Path(output).resolve():
        raise ValueError(f"The output {output} is the input file: writing it would replace your data. Write the "
                         "output to another path.")


def _run_stream(runner: Runner, items: Iterator[dict[str, Any]], pad_id: int, bar: Any, *, per_token: bool,
                chunk_size: int, max_tokens: int | None, batch_size: int | None
                ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    def run(batch: list[dict[str, Any]]) -> list[np.ndarray]:
        ids, mask = pad_batch([item["ids"] for item in batch], pad_id)
        out = runner(ids.numpy(), mask.numpy())  # (b, C), (b, L, C) or (b, d)
        return [out[i, : len(item["ids"])] if per_token else out[i] for i, item in enumerate(batch)]

    return bucketed_in_order(items, lambda item: len(item["ids"]), run, chunk_size=chunk_size,
                             max_tokens=max_tokens, batch_size=batch_size, on_batch=bar.update)


def predict(model: str | os.PathLike, source: str | os.PathLike, output: str | os.PathLike, *,
            text_column: str = "text", text_pair_column: str | None = None, graph: str | None = None,
            max_length: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS, batch_size: int | None = None,
            chunk_size: int = DEFAULT_CHUNK, format: str | None = None, split: str | None = None,
            threads: int | None = None, progress: bool = True) -> int:
    """Labels and scores (sequence classification, regression) or entity spans (token classification) of every row
    of ``source``, written to ``output`` in input order (records: :mod:`.tasks`; files: :mod:`.writers`).

    Args:
        model: A fine-tuned model folder (PyTorch) or an exported ONNX folder (with its config and tokenizer).
        source: The input table (CSV, TSV, JSON Lines, Parquet, a ``datasets`` folder or cached name).
        output: ``.jsonl`` / ``.json`` or ``.csv`` / ``.tsv``.
        text_column: Column of the text.
        text_pair_column: Column of the second text of sentence-pair models (sequence classification only).
        graph: ONNX folders: the graph to run (default ``model.deploy.onnx``, else ``model.onnx``).
        max_length: Token limit per row (default: the model's ``max_position_embeddings``); longer rows are
            truncated.
        max_tokens: Padded tokens per batch (length bucketing).
        batch_size: Most rows per batch (1: one row per call).
        chunk_size: Rows read, bucketed and written together (bounds memory).
        format: The input's format when its suffix does not say it.
        split: A dataset's split.
        threads: ONNX Runtime intra-op threads.
        progress: Show a progress bar (stderr).

    Returns:
        The number of rows written.

    Raises:
        FileNotFoundError: No model folder, graph or input file.
        ValueError: A model without a classification head, a bad output suffix, a missing column or blank text
            (:class:`~modernalbert.data.tables.TableError`, naming file, row and column), an empty input, or a text
            pair for token classification.
    """
    output_format(output, RECORD_FORMATS, "predictions")
    _refuse_overwriting_input(source, output)
    runner, tokenizer = _setup(model, "logits", graph, "mean", threads)
    task = task_of(runner.config, runner.architecture)
    names = label_names(runner.config)
    tokens = task == "token_classification"
    if tokens and text_pair_column:
        raise ValueError("Token classification reads one text per row: drop --text-pair-column.")
    if tokens and not getattr(tokenizer, "is_fast", False):
        raise ValueError("Entity spans need a fast tokenizer (character offsets); save the model with one.")
    rows = _rows(source, text_column, text_pair_column, format=format, split=split)
    items = _encoded(rows, tokenizer, _checked_max_length(runner, max_length), chunk_size, tokens)
    with _progress(f"predict ({runner.kind})", progress) as bar, record_writer(output) as writer:
        for item, logits in _run_stream(runner, items, tokenizer.pad_token_id, bar, per_token=tokens,
                                        chunk_size=chunk_size, max_tokens=max_tokens, batch_size=batch_size):
            if tokens:
                writer.write({"entities": entity_spans(logits, item["offsets"], item["text"], names)})
            else:
                writer.write(sequence_record(logits, task, names))
        if writer.count == 0:
            raise TableError(f"{source} has no rows: nothing to predict.")
        return writer.count


def encode(model: str | os.PathLike, source: str | os.PathLike, output: str | os.PathLike, *,
           text_column: str = "text", pooling: str | None = None, normalize: bool | None = None,
           graph: str | None = None, max_length: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
           batch_size: int | None = None, chunk_size: int = DEFAULT_CHUNK, format: str | None = None,
           split: str | None = None, threads: int | None = None, progress: bool = True) -> int:
    """Sentence embeddings of every row of ``source``, written to ``output`` (``.npy`` or Parquet) in input order.

    Pooling and normalisation follow the package's sentence-embedding convention
    (:func:`~modernalbert.evaluation.beir.embedding.resolve_model`): explicit arguments, else a sentence-transformers
    folder's own ``1_Pooling`` / ``Normalize``, else mean pooling without normalisation. An ONNX graph's pooling was
    fixed at export (its ``modernalbert.pooling`` metadata); asking for another is refused.

    Args:
        model: A model folder (PyTorch, any ModernAlbert class: its encoder is used) or an exported ONNX folder whose
            graph has a ``sentence_embedding`` output.
        source, text_column, graph, max_length, max_tokens, batch_size, chunk_size, format, split, threads, progress:
            As :func:`predict`.
        pooling: ``"mean"`` or ``"cls"``.
        normalize: L2-normalise each embedding.

    Returns:
        The number of rows written.

    Raises:
        FileNotFoundError, ValueError: As :func:`predict`; a graph without a sentence embedding or with another
            pooling.
    """
    from ..evaluation.beir.embedding import resolve_model

    output_format(output, EMBEDDING_FORMATS, "embeddings")
    _refuse_overwriting_input(source, output)
    path, chosen, norm = resolve_model(model, pooling, normalize)
    runner, tokenizer = _setup(path, "sentence_embedding", graph, chosen, threads)
    if runner.kind.startswith("onnx"):
        _check_graph_pooling(Path(path), runner, chosen, explicit=pooling is not None)
    rows = _rows(source, text_column, None, format=format, split=split)
    items = _encoded(rows, tokenizer, _checked_max_length(runner, max_length), chunk_size, False)
    with _progress(f"encode ({runner.kind})", progress) as bar, embedding_writer(output) as writer:
        stream = _run_stream(runner, items, tokenizer.pad_token_id, bar, per_token=False, chunk_size=chunk_size,
                             max_tokens=max_tokens, batch_size=batch_size)
        for chunk in chunks(stream, chunk_size):
            emb = np.stack([e for _, e in chunk])  # (b, d)
            if norm:
                emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
            writer.write(emb)
        if writer.rows == 0:
            raise TableError(f"{source} has no rows: nothing to encode.")
        return writer.rows


def _check_graph_pooling(folder: Path, runner: Runner, pooling: str, explicit: bool) -> None:
    import onnx

    from ..export.onnx import META_POOLING
    from ..export.ort_graph import META_EMBEDDING_POOLING

    graph = folder / runner.kind.split(":", 1)[1]
    meta = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
    exported = meta.get(META_EMBEDDING_POOLING) or meta.get(META_POOLING) or None
    if explicit and exported is not None and exported != pooling:
        raise ValueError(f"{graph} pools its sentence embedding with {exported!r}, not {pooling!r}: drop --pooling "
                         f"or export again with --pooling {pooling}.")


__all__ = ["encode", "predict"]
