"""The router losses of training loops that never see the model's outputs (sentence-transformers).

A ModernAlbert head adds its router losses (Switch load balance and z-loss, weighted by the config's coefficients)
to the loss whenever it is given labels. A loop that computes its loss from the embeddings instead, such as
``SentenceTransformerTrainer``, never sees those outputs: wrap its loss in :class:`RouterLoss` and the router
losses of every forward the loss runs are added.

Example:
    >>> from sentence_transformers import SentenceTransformer, losses  # doctest: +SKIP
    >>> model = SentenceTransformer("path/to/modernalbert")  # doctest: +SKIP
    >>> loss = RouterLoss(losses.MultipleNegativesRankingLoss(model))  # doctest: +SKIP
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..model.modeling import ModernAlbertModel


@contextlib.contextmanager
def collect_router_losses(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of a ModernAlbert encoder inside ``module`` returns its router outputs and
    appends its weighted router loss, ``router_aux_loss_coef * aux + router_z_loss_coef * z`` (a scalar with its
    graph), to the yielded list. Encoders without a router append nothing.

    The encoders' ``forward`` is wrapped for the duration (module hooks would not do: sentence-transformers calls
    ``forward`` directly, past ``__call__`` and its hooks).

    Args:
        module: Any module holding ModernAlbert encoders (a SentenceTransformer, a head, a DDP wrapper).
    """
    found: list[torch.Tensor] = []
    encoders = [m for m in module.modules() if isinstance(m, ModernAlbertModel)]
    saved = [(m, m.__dict__.get("forward")) for m in encoders]  # an instance-level forward (e.g. accelerate's)

    def collecting(encoder: ModernAlbertModel) -> Callable[..., Any]:
        forward = encoder.forward

        def forward_with_router_losses(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **{**kwargs, "output_router_logits": True})
            aux = out.get("router_aux_loss") if isinstance(out, dict) else None
            if aux is not None:
                cfg = encoder.config
                found.append(cfg.router_aux_loss_coef * aux + cfg.router_z_loss_coef * out["router_z_loss"])
            return out

        return forward_with_router_losses

    try:
        for encoder in encoders:
            encoder.forward = collecting(encoder)
        yield found
    finally:
        for encoder, forward in saved:
            if forward is None:
                encoder.__dict__.pop("forward", None)
            else:
                encoder.forward = forward


class RouterLoss(nn.Module):
    """A sentence-transformers loss plus the router losses of the forwards it runs (their mean over forwards: one
    per text column, as the loss sees them).

    Args:
        loss: Any sentence-transformers loss module (it holds the SentenceTransformer as ``loss.model``).
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    @property
    def model(self) -> nn.Module:
        """The SentenceTransformer the wrapped loss trains (sentence-transformers' trainer reads it)."""
        return self.loss.model

    def forward(self, features: Any, labels: torch.Tensor | None) -> torch.Tensor:
        with collect_router_losses(self.loss.model) as router:
            value = self.loss(features, labels)
        return value + torch.stack(router).mean() if router else value

    def get_config_dict(self) -> dict[str, Any]:
        """For the model card: the wrapped loss and its settings."""
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, **inner}


__all__ = ["RouterLoss", "collect_router_losses"]
