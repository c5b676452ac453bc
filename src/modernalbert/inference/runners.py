"""Runners: one padded batch of token ids in, one output array out, from a PyTorch model folder or an exported ONNX
folder, so that ``predict`` / ``encode`` and the deployment benchmark treat both the same way.

A runner is called as ``runner(input_ids, attention_mask)`` with (B, L) int64 numpy arrays, right-padded, and returns
its one output as a float32 numpy array: ``logits`` ((B, C) or (B, L, C)) for ``output="logits"``, the (B, d)
``sentence_embedding`` for ``output="sentence_embedding"``.

ONNX folders are what ``modernalbert export onnx`` writes: ``model.onnx`` (the torch-exported reference graph),
``model.deploy.onnx`` (the deployment graph of :mod:`modernalbert.export.ort_graph`, with ``--deploy``) and their
int8 forms, beside ``config.json`` and the tokenizer. Without ``graph`` a runner takes ``model.deploy.onnx`` when it
exists, else ``model.onnx``: the fp32 graphs; an int8 graph is used only when named (it changes the numbers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUTPUTS = ("logits", "sentence_embedding")
DEFAULT_GRAPHS = ("model.deploy.onnx", "model.onnx")


@dataclass
class Runner:
    """A model behind one call: ``fn(ids, mask) -> (B, ...) float32``.

    Attributes:
        fn: The batch function.
        config: The model's configuration (``id2label``, ``problem_type``, ``max_position_embeddings``, ...).
        output: ``"logits"`` or ``"sentence_embedding"``.
        kind: ``"torch"`` or ``"onnx:<graph file name>"``.
        architecture: The ModernAlbert class name of the model (``ModernAlbertModel`` for an encoder).
    """

    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    config: Any
    output: str
    kind: str
    architecture: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.fn(input_ids, attention_mask)


def is_onnx_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding an exported ``.onnx`` graph."""
    folder = Path(path)
    return folder.is_dir() and any(folder.glob("*.onnx"))


def torch_runner(model: Any, output: str, pooling: str = "mean") -> Runner:
    """A runner over a ModernAlbert model (eval mode, ``torch.inference_mode``).

    Args:
        model: Any ModernAlbert model; ``output="logits"`` needs a head, ``"sentence_embedding"`` pools the
            encoder's last hidden state (:func:`~modernalbert.model.modeling.pool`).
        output: ``"logits"`` or ``"sentence_embedding"``.
        pooling: ``"mean"`` or ``"cls"`` (sentence embeddings).

    Raises:
        ValueError: Unknown output, or logits asked of a model without a head.
    """
    from ..model.modeling import ModernAlbertModel, pool

    _check_output(output)
    if output == "logits" and isinstance(model, ModernAlbertModel):
        raise ValueError("This is a bare encoder (ModernAlbertModel): it has no logits to predict from. Use "
                         "`modernalbert encode` for embeddings, or a fine-tuned classification model.")
    model.eval()

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        i, m = torch.from_numpy(np.asarray(ids, np.int64)), torch.from_numpy(np.asarray(mask, np.int64))
        with torch.inference_mode():
            if output == "logits":
                return model(input_ids=i, attention_mask=m).logits.float().numpy()
            hidden = model.base_model(input_ids=i, attention_mask=m).last_hidden_state  # (B, L, d)
            return pool(hidden, m, pooling).float().numpy()  # (B, d)

    return Runner(fn, model.config, output, "torch", type(model).__name__)


def ort_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation, ``threads`` intra-op threads (default: ONNX
    Runtime's), sequential execution, and threads that sleep rather than spin while waiting (machines are shared).

    Raises:
        FileNotFoundError: No graph at ``path``.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX graph at {path}.")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(graph: str | os.PathLike, config: Any, output: str, threads: int | None = None) -> Runner:
    """A runner over one ONNX graph file.

    Raises:
        ValueError: The graph has no ``output`` (the message says how to export one that has).
    """
    from ..export.onnx import feed

    _check_output(output)
    session = ort_session(graph, threads)
    names = [o.name for o in session.get_outputs()]
    if output not in names:
        fix = ("export the encoder with a sentence embedding (modernalbert export onnx IN OUT --pooling mean, or "
               "--deploy)" if output == "sentence_embedding" else "export a model with a classification head")
        raise ValueError(f"{graph} has outputs {names}, not {output!r}: {fix}.")

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run([output], feed(session, (ids, mask)))[0]

    architecture = (getattr(config, "architectures", None) or ["ModernAlbertModel"])[0]
    return Runner(fn, config, output, f"onnx:{Path(graph).name}", architecture)


def load_runner(path: str | os.PathLike, output: str, *, graph: str | None = None, pooling: str = "mean",
                threads: int | None = None, dtype: torch.dtype = torch.float32) -> Runner:
    """A runner for a model folder: PyTorch (``config.json`` + safetensors) or an exported ONNX folder.

    Args:
        path: The folder.
        output: ``"logits"`` or ``"sentence_embedding"``.
        graph: ONNX folders: the graph file to run (e.g. ``model.deploy.int8.onnx``); default the deployment graph
            when present, else ``model.onnx``.
        pooling: PyTorch folders: sentence-embedding pooling (an ONNX graph's pooling was fixed at export).
        threads: ONNX Runtime intra-op threads.
        dtype: PyTorch folders: the weights' dtype (fp32 by default, what CPU inference is fast and exact in;
            bf16 / fp16 on GPUs). Outputs are returned as float32 whatever it is.

    Raises:
        FileNotFoundError: No such folder, or no such graph in it.
        ValueError: Not a ModernAlbert folder, or the model cannot give ``output``.
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"No model folder at {folder}.")
    if is_onnx_folder(folder):
        from ..model.loading import load_config

        if graph is None:
            graph = next((g for g in DEFAULT_GRAPHS if (folder / g).is_file()), None)
            if graph is None:
                raise FileNotFoundError(f"{folder} holds no {' or '.join(DEFAULT_GRAPHS)}; name the graph to run "
                                        f"(found {sorted(p.name for p in folder.glob('*.onnx'))}).")
        elif not (folder / graph).is_file():
            raise FileNotFoundError(f"No graph {graph} in {folder} (found "
                                    f"{sorted(p.name for p in folder.glob('*.onnx'))}).")
        return onnx_runner(folder / graph, load_config(folder), output, threads)
    if graph is not None:
        raise ValueError(f"{folder} is a PyTorch model folder: --graph names a graph of an exported ONNX folder.")
    from ..model.loading import load_pretrained

    model = load_pretrained(folder, dtype=dtype)
    return torch_runner(model, output, pooling)


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}: use one of {OUTPUTS}.")


__all__ = ["DEFAULT_GRAPHS", "OUTPUTS", "Runner", "is_onnx_folder", "load_runner", "onnx_runner", "ort_session",
           "torch_runner"]
