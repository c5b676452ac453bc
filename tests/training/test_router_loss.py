"""Router losses under sentence-transformers' trainer (RouterLoss)."""

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from modernalbert import ModernAlbertConfig, ModernAlbertModel
from modernalbert.training import RouterLoss
from tests.conftest import make_tokenizer

PAIRS = {"anchor": ["the cat sat on the mat", "a dog ran", "the old house", "fish swam under the river"],
         "positive": ["a cat sat", "the dog ran near the tree", "a big old house", "the fish swam"]}


@pytest.fixture
def folder(tmp_path):
    tokenizer = make_tokenizer()
    # Weight mixing and the experts' B = 0 at init: the embeddings, hence the ranking loss, do not depend on the gate,
    # and the router's gradient is exactly zero but for the router losses.
    config = ModernAlbertConfig.from_preset("test", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                            mol_mixing="weight", router_aux_loss_coef=0.5, router_z_loss_coef=0.1)
    ModernAlbertModel(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def _router_update(folder, tmp_path, wrap: bool) -> torch.Tensor:
    model = SentenceTransformer(folder, device="cpu")
    router = model[0].auto_model.groups[1].mlp.router.weight
    before = router.detach().clone()
    loss = MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, learning_rate=0.5,
        optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS),
                               loss=RouterLoss(loss) if wrap else loss).train()
    return router.detach() - before


def test_the_router_losses_reach_the_router_under_sentence_transformers_trainer(folder, tmp_path):
    """The ranking loss alone leaves the router untouched; wrapped, the router losses move it."""
    assert (_router_update(folder, tmp_path, wrap=False) == 0).all()
    assert _router_update(folder, tmp_path, wrap=True).abs().max() > 1e-4


def test_router_loss_adds_the_weighted_mean_router_loss_of_each_forward(folder):
    model = SentenceTransformer(folder, device="cpu")
    inner = MultipleNegativesRankingLoss(model)
    features = [model.preprocess(PAIRS["anchor"]), model.preprocess(PAIRS["positive"])]
    encoder = model[0].auto_model
    expected = []
    for f in features:
        out = encoder(input_ids=f["input_ids"], attention_mask=f["attention_mask"], output_router_logits=True)
        expected.append(0.5 * out.router_aux_loss + 0.1 * out.router_z_loss)
    total = RouterLoss(inner)(features, None)
    torch.testing.assert_close(total, inner(features, None) + torch.stack(expected).mean())
