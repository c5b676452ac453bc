"""The deployment graph is a second implementation of the forward: it must equal the PyTorch model (atol 1e-5 on
fp32 outputs of order 1; measured ~5e-7) on padded batches that reach past the local layers' window, for every form
and head it writes; what it cannot write is refused with the fix; its int8 form keeps predictions and embeddings on
real text."""

import numpy as np
import pytest
import torch

from modernalbert.export.merge import merge_experts
from modernalbert.export.onnx import inference_session, verify_onnx
from modernalbert.export.ort_graph import (
    encoder_matmuls,
    quantize_deployment_graph,
    write_deployment_graph,
)
from modernalbert.model.modeling import (
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
)
from tests.conftest import padded_batch, randomize_adapters, small_config

ATOL = 1e-5


def _batches():
    # The test preset's local window is 4 each way: lengths up to 23 attend far outside it; an all-pad row and a
    # batch without padding are the edge cases of the key lengths.
    yield [t.numpy() for t in padded_batch(lengths=(23, 5, 17, 1))]
    ids, mask = padded_batch(lengths=(9, 0, 14), seed=1)
    yield ids.numpy(), mask.numpy()
    yield [t.numpy() for t in padded_batch(lengths=(12, 12), seed=2)]


def _merged(cls, **overrides):
    model = cls(small_config(**overrides)).eval()
    randomize_adapters(model)
    return merge_experts(model, form="fold").eval()


def _compare(model, path):
    session = inference_session(path)
    names = [o.name for o in session.get_outputs()]
    for ids, mask in _batches():
        got = dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask})))
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            hidden = model.base_model(input_ids=torch.from_numpy(ids),
                                      attention_mask=torch.from_numpy(mask)).last_hidden_state
        m = torch.from_numpy(mask).float()[..., None]
        mean = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).numpy()
        ref = {"logits": getattr(out, "logits", None), "last_hidden_state": hidden, "sentence_embedding": mean}
        for name in names:
            r = ref[name] if name != "sentence_embedding" or "last_hidden_state" not in names else None
            if r is None:
                continue
            np.testing.assert_allclose(got[name], np.asarray(r), atol=ATOL, rtol=0, err_msg=name)
    return names


@pytest.mark.parametrize("cls", [ModernAlbertModel, ModernAlbertForSequenceClassification,
                                 ModernAlbertForTokenClassification])
def test_graph_equals_pytorch_with_local_layers_and_padding(tmp_path, cls):
    model = _merged(cls)
    assert set(model.config.layer_types) == {"full_attention", "sliding_attention"}
    path = write_deployment_graph(model, tmp_path / "g.onnx")
    names = _compare(model, path)
    assert names == {ModernAlbertModel: ["last_hidden_state", "sentence_embedding"],
                     ModernAlbertForSequenceClassification: ["logits", "sentence_embedding"],
                     ModernAlbertForTokenClassification: ["logits"]}[cls]
    if cls is ModernAlbertModel:  # the package's own verifier agrees (it reads the graph's pooling metadata)
        assert max(verify_onnx(model, path, list(_batches()), atol=ATOL).values()) <= ATOL


def test_cls_pooling_and_the_local_rope_base(tmp_path):
    """cls pooling (head and encoder), a local RoPE base other than the global one, lowrank-merged adapters."""
    model = ModernAlbertForSequenceClassification(small_config(classifier_pooling="cls")).eval()
    randomize_adapters(model)
    model = merge_experts(model, form="lowrank").eval()
    params = model.config.rope_parameters
    assert params["sliding_attention"]["rope_theta"] != params["full_attention"]["rope_theta"]
    _compare(model, write_deployment_graph(model, tmp_path / "clf.onnx"))
    encoder = model.model
    session = inference_session(write_deployment_graph(encoder, tmp_path / "enc.onnx", pooling="cls"))
    ids, mask = next(_batches())
    emb = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        ref = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state[:, 0]
    np.testing.assert_allclose(emb, ref.numpy(), atol=ATOL, rtol=0)


def test_rrt_adapters_fold_per_position_and_shared_weights_are_stored_once(tmp_path):
    import onnx

    cfg = small_config(mol_groups=None, ffn_variants=["glu", "rrt"])
    model = ModernAlbertModel(cfg).eval()
    randomize_adapters(model)  # a different adapter at each of the group's two recursion positions
    path = write_deployment_graph(model, tmp_path / "g.onnx")
    _compare(model, path)
    graph = onnx.load(str(path)).graph
    # L = 4 effective layers over K = 2 shared blocks: each block's Wqkv is stored once, the RRT group's FFN once
    # per position
    names = [t.name for t in graph.initializer]
    assert sum(n.endswith("attn.Wqkv.weight.T") for n in names) == cfg.num_hidden_groups
    assert sum(n.startswith("groups.1.mlp.position") and n.endswith("Wi.weight.T") for n in names) == 2


def test_routed_experts_and_other_dtypes_are_refused_with_the_fix(tmp_path):
    model = ModernAlbertForSequenceClassification(small_config()).eval()
    with pytest.raises(ValueError, match=r"routed experts.*modernalbert merge IN OUT --form fold"):
        write_deployment_graph(model, tmp_path / "g.onnx")
    with pytest.raises(ValueError, match="fp32"):
        write_deployment_graph(merge_experts(model, form="fold").to(torch.bfloat16), tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_int8_keeps_predictions_and_embeddings_on_real_text(tmp_path):
    """Per-channel int8 of the encoder's MatMuls against fp32 PyTorch on RT test sentences (real text, tokenised
    with the packaged MiniLM tokenizer), at tiny scale: >= 97 % identical labels (a random tiny head has many
    near-ties; the full-scale check, >= 99 % on a fine-tuned model, is benchmarks/deploy.py's) and sentence-embedding
    cosine >= 0.99."""
    from transformers import AutoTokenizer

    from modernalbert.data.rotten_tomatoes import sentiment_splits
    from tests.evaluation.test_squad import fetched

    tokenizer = AutoTokenizer.from_pretrained(fetched("all-MiniLM-L6-v2"))
    model = _merged(ModernAlbertForSequenceClassification, vocab_size=tokenizer.vocab_size)
    fp32 = write_deployment_graph(model, tmp_path / "g.onnx")
    int8 = quantize_deployment_graph(fp32, tmp_path / "g8.onnx")
    assert encoder_matmuls(fp32) and all("head" not in n for n in encoder_matmuls(fp32))
    session = inference_session(int8)
    sentences = [r["sentence"] for r in sentiment_splits(seed=0)["test"][:256]]
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    logits, emb = session.run(["logits", "sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        hidden = model.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    m = torch.from_numpy(mask).float()[..., None]
    ref_emb = ((hidden * m).sum(1) / m.sum(1)).numpy()
    agreement = np.mean(logits.argmax(-1) == ref.argmax(-1))
    cos = (emb * ref_emb).sum(-1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref_emb, axis=-1))
    assert agreement >= 0.97 and cos.min() >= 0.99, (agreement, cos.min())


def test_export_command_refuses_a_routed_model_before_writing(tmp_path, capsys):
    from modernalbert.cli.main import main
    from modernalbert.model.loading import save_model

    save_model(ModernAlbertModel(small_config()), None, tmp_path / "mol")
    assert main(["export", "onnx", str(tmp_path / "mol"), str(tmp_path / "out"), "--deploy"]) == 2
    assert "merge IN OUT --form fold" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.onnx").exists()
