"""Routing analytics: per-position statistics against the model's own router outputs, padding invariance,
preferred tokens, the written files, the CLI end to end and its errors."""

import json
import math
from collections import Counter

import pytest
import torch

from modernalbert import ModernAlbertForMaskedLM, ModernAlbertModel
from modernalbert.analysis import REPORT_JSON, REPORT_PNG, routed_layers, routing_report
from modernalbert.cli.main import main
from tests.conftest import WORDS, make_tokenizer, randomize_adapters, small_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_texts(n: int = 14, seed: int = 0) -> list[str]:
    """Texts of varied lengths (so batches are padded) that repeat words often enough to be ranked."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        length = int(torch.randint(3, 14, (1,), generator=g))
        texts.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)))
    return texts


def randomize_routers(model: torch.nn.Module, std: float = 0.5) -> None:
    """Router weights large enough that routing depends on the token (they start near uniform)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(0.0, std)


def make_model(cls=ModernAlbertModel, **overrides):
    model = cls(small_config(**overrides)).eval()
    randomize_adapters(model)
    randomize_routers(model)
    return model


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def texts():
    return make_texts()


# ============================================================================================= statistics


def test_single_batch_matches_model_outputs(tmp_path, tokenizer, texts):
    model = make_model()
    report = routing_report(model, tokenizer, texts, tmp_path, batch_size=len(texts))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    rows = report["positions"]
    assert [(r["layer"], r["group"], r["position"]) for r in rows] == [(2, 1, 0), (3, 1, 1)]
    assert len(rows) == out.expert_usage.shape[0]
    usage = torch.tensor([r["expert_usage"] for r in rows], dtype=torch.float64)  # (P, E)
    probs = torch.tensor([r["mean_router_prob"] for r in rows], dtype=torch.float64)  # (P, E)
    torch.testing.assert_close(usage, out.expert_usage.double(), atol=1e-7, rtol=0)
    torch.testing.assert_close(probs, out.router_probs.double(), atol=1e-5, rtol=0)
    # The model's aux loss is the mean over routed calls of the same Switch balance.
    balance = torch.tensor([r["balance"] for r in rows])
    assert balance.mean().item() == pytest.approx(out.router_aux_loss.item(), abs=1e-5)
    n_real = int(enc["attention_mask"].sum())
    assert all(r["num_tokens"] == n_real for r in rows)
    s = report["summary"]
    assert (s["model_type"], s["num_experts"], s["top_k"]) == ("modernalbert", 4, 2)
    assert (s["num_texts"], s["num_tokens"]) == (len(texts), n_real)


def test_statistics_lie_in_their_ranges(tmp_path, tokenizer, texts):
    report = routing_report(make_model(), tokenizer, texts, tmp_path, batch_size=4)
    E = report["summary"]["num_experts"]
    for r in report["positions"] + report["groups"]:
        assert sum(r["expert_usage"]) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 <= u <= 1.0 / report["summary"]["top_k"] + 1e-12 for u in r["expert_usage"])
        assert 0.0 <= r["router_entropy"] <= math.log(E) + 1e-9
        assert r["router_entropy_normalized"] == pytest.approx(r["router_entropy"] / math.log(E))
    for r in report["positions"]:
        assert sum(r["mean_router_prob"]) == pytest.approx(1.0, abs=1e-6)  # fp32 softmax, as in the router
        # Switch balance lies in (0, E]; it is not bounded below by 1 (top-k choices and mean probabilities can
        # disagree), so only the identity and the bounds are checked here.
        assert 0.0 < r["balance"] <= E
        assert r["balance"] == pytest.approx(E * sum(u * p for u, p in zip(r["expert_usage"], r["mean_router_prob"])))
    # Routing is not degenerate with random router weights: entropy strictly inside its range.
    assert 0.05 < report["summary"]["mean_router_entropy_normalized"] < 0.999


def test_uniform_router_gives_max_entropy_and_balance_one(tmp_path, tokenizer, texts):
    model = make_model()
    with torch.no_grad():
        model.groups[1].mlp.router.weight.zero_()
    report = routing_report(model, tokenizer, texts, tmp_path)
    for r in report["positions"]:
        assert r["router_entropy_normalized"] == pytest.approx(1.0, abs=1e-6)
        assert r["mean_router_prob"] == pytest.approx([0.25] * 4, abs=1e-6)
        assert r["balance"] == pytest.approx(1.0, abs=1e-6)  # uniform mean probability: balance 1 whatever the usage


def test_padding_and_batch_size_do_not_change_the_report(tmp_path, tokenizer, texts):
    model = make_model()
    reports = [routing_report(model, tokenizer, texts, tmp_path / f"b{b}", batch_size=b) for b in (1, 5, len(texts))]
    tokenizer.padding_side = "left"
    reports.append(routing_report(model, tokenizer, texts, tmp_path / "left", batch_size=4))
    ref = reports[0]
    for rep in reports[1:]:
        assert rep["summary"]["num_tokens"] == ref["summary"]["num_tokens"]
        for a, b in zip(rep["positions"], ref["positions"]):
            assert a["num_tokens"] == b["num_tokens"]
            assert a["expert_usage"] == pytest.approx(b["expert_usage"], abs=1e-12)
            assert a["mean_router_prob"] == pytest.approx(b["mean_router_prob"], abs=1e-5)
            assert a["router_entropy"] == pytest.approx(b["router_entropy"], abs=1e-5)
        for got, want in zip(rep["groups"][0]["preferred_tokens"], ref["groups"][0]["preferred_tokens"],
                             strict=True):
            assert got["expert"] == want["expert"]
            pairs = [[(t["token"], t["count"]) for t in side["tokens"]] for side in (got, want)]
            assert pairs[0] == pairs[1]
            assert [t["share"] for t in got["tokens"]] == pytest.approx([t["share"] for t in want["tokens"]])


def test_preferred_tokens_agree_with_counts_and_routing(tmp_path, tokenizer, texts):
    model = make_model()
    # Independent record of the routing: each real token's chosen experts at every call of group 1's router.
    events: list[tuple[torch.Tensor, torch.Tensor]] = []
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids = enc["input_ids"][enc["attention_mask"].bool()]  # (N,)
    handle = model.groups[1].mlp.router.register_forward_hook(lambda m, a, out: events.append((ids, out[1].sum(1))))
    with torch.no_grad():
        model(**enc)
    handle.remove()
    occurrences = Counter(ids.tolist())
    routed = Counter()
    for tok_ids, chosen in events:  # chosen: (N, E)
        for v, row in zip(tok_ids.tolist(), chosen.tolist()):
            for e, c in enumerate(row):
                routed[v, e] += c

    report = routing_report(model, tokenizer, texts, tmp_path, batch_size=len(texts), top_tokens=5, min_count=3)
    group = report["groups"][0]
    assert group["layers"] == [2, 3] and group["uniform_share"] == 0.5
    eligible = [v for v, c in occurrences.items() if c >= 3]
    assert group["num_ranked_tokens"] == len(eligible)
    for entry in group["preferred_tokens"]:
        e = entry["expert"]
        listed = entry["tokens"]
        assert len(listed) == min(5, len(eligible))
        for t in listed:
            assert t["token"] == tokenizer.convert_ids_to_tokens(t["id"])
            assert t["count"] == occurrences[t["id"]] >= 3
            assert t["share"] == pytest.approx(routed[t["id"], e] / (len(events) * occurrences[t["id"]]))
        shares = [t["share"] for t in listed]
        assert shares == sorted(shares, reverse=True)
        # Nothing left out ranks above the last listed token.
        expected = sorted((-routed[v, e] / (len(events) * occurrences[v]), -occurrences[v], v) for v in eligible)
        assert [t["id"] for t in listed] == [v for _, _, v in expected[:5]]


def test_head_model_moa_variant_and_hooks_removed(tmp_path, tokenizer, texts):
    model = make_model(ModernAlbertForMaskedLM, ffn_variants=["moa", "mol"])
    model.train()
    report = routing_report(model, tokenizer, texts, tmp_path, batch_size=len(texts))
    assert model.training  # the caller's mode comes back
    assert report["summary"]["model_class"] == "ModernAlbertForMaskedLM"
    assert [(r["layer"], r["variant"]) for r in report["positions"]] == [(0, "moa"), (1, "moa"), (2, "mol"),
                                                                         (3, "mol")]
    assert [g["group"] for g in report["groups"]] == [0, 1]
    assert routed_layers(model.model) == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(**enc)
    usage = torch.tensor([r["expert_usage"] for r in report["positions"]], dtype=torch.float64)  # (P, E)
    torch.testing.assert_close(usage, out.expert_usage.double(), atol=1e-7, rtol=0)
    for module in model.modules():
        assert not module._forward_hooks


def test_hooks_removed_and_nothing_written_on_error(tmp_path, tokenizer, texts):
    model = make_model(vocab_size=16)  # the tokenizer's ids go up to 36: the model rejects them
    with pytest.raises(ValueError, match="vocab_size"):
        routing_report(model, tokenizer, texts, tmp_path / "out")
    assert not model.groups[1].mlp.router._forward_hooks
    assert not (tmp_path / "out").exists()


def test_files_are_written_atomically_and_match(tmp_path, tokenizer, texts):
    out = tmp_path / "nested" / "report"
    report = routing_report(make_model(), tokenizer, texts, out)
    assert sorted(p.name for p in out.iterdir()) == [REPORT_JSON, REPORT_PNG]  # no temporary file left
    assert json.loads((out / REPORT_JSON).read_text()) == report
    assert (out / REPORT_PNG).read_bytes()[:8] == PNG_MAGIC


def test_bad_arguments(tmp_path, tokenizer, texts):
    with pytest.raises(ValueError, match="no MoL/MoA groups"):
        routing_report(ModernAlbertModel(small_config(mol_groups=[])), tokenizer, texts, tmp_path)
    with pytest.raises(ValueError, match="No texts"):
        routing_report(make_model(), tokenizer, [], tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        routing_report(make_model(), tokenizer, texts, tmp_path, batch_size=0)


# ==================================================================================================== CLI


def save_model(path, **overrides):
    model = make_model(ModernAlbertForMaskedLM, **overrides)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def test_cli_end_to_end(tmp_path, capsys, texts):
    model_dir = save_model(tmp_path / "model")
    f1, f2 = tmp_path / "a.txt", tmp_path / "b.txt"
    f1.write_text("\n".join(texts[:8]) + "\n\n   \n")
    f2.write_text("\n".join(texts[8:]))
    out = tmp_path / "out"
    rc = main(["routing-report", str(model_dir), "--text", str(f1), str(f2), "--out", str(out),
               "--batch-size", "3", "--top-tokens", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / REPORT_JSON) in printed and str(out / REPORT_PNG) in printed
    assert "balance" in printed and len(printed.splitlines()) == 2 + 2 + 2  # header lines, 2 positions, 2 paths
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["summary"]["num_texts"] == len(texts)
    assert report["summary"]["model_class"] == "ModernAlbertForMaskedLM"  # loaded as the class it was saved as
    assert all(len(e["tokens"]) <= 4 for e in report["groups"][0]["preferred_tokens"])
    # The same routing as the in-memory model (the checkpoint's encoder weights come back unchanged).
    direct = routing_report(ModernAlbertForMaskedLM.from_pretrained(model_dir), make_tokenizer(), texts,
                            tmp_path / "direct")
    for a, b in zip(report["positions"], direct["positions"]):
        assert a["expert_usage"] == pytest.approx(b["expert_usage"], abs=1e-12)


def test_cli_separate_tokenizer(tmp_path, capsys, texts):
    model_dir = tmp_path / "model"
    make_model(ModernAlbertForMaskedLM).save_pretrained(model_dir)
    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)
    f = tmp_path / "t.txt"
    f.write_text("\n".join(texts))
    assert main(["routing-report", str(model_dir), "--text", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    rc = main(["routing-report", str(model_dir), "--text", str(f), "--tokenizer", str(tok_dir),
               "--out", str(tmp_path / "o")])
    assert rc == 0


def test_cli_errors(tmp_path, capsys, texts):
    model_dir = save_model(tmp_path / "model")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(texts))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    missing = tmp_path / "missing.txt"

    def run(*args):
        rc = main(["routing-report", *map(str, args), "--out", str(tmp_path / "out")])
        return rc, capsys.readouterr().err

    rc, err = run(model_dir, "--text", good, missing)
    assert rc == 2 and "does not exist" in err and str(missing) in err
    rc, err = run(model_dir, "--text", empty)
    assert rc == 2 and str(empty) in err and "at least one non-empty line" in err
    rc, err = run(tmp_path / "nowhere", "--text", good)
    assert rc == 2 and "No model folder at" in err
    plain_dir = save_model(tmp_path / "plain", mol_groups=[])
    rc, err = run(plain_dir, "--text", good)
    assert rc == 2 and "no MoL/MoA groups to report on" in err
    assert not (tmp_path / "out").exists()
