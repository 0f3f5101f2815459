"""The next-token model every arm trains, and its seeded initial weights."""

import torch
from torch import nn


class NextTokenModel(nn.Module):
    """Embedding(vocab, dim) followed by Linear(dim, vocab): logits for the next token."""

    def __init__(self, vocab_size: int, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.linear = nn.Linear(embedding_dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (batch,) int64 -> logits: (batch, vocab_size)
        return self.linear(self.embedding(tokens))


def initial_state(vocab_size: int, embedding_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Return the weights a freshly seeded model starts from, shared by every arm.

    The embedding is initialised before the linear layer, so both draw from the
    generator in that order right after seeding.
    """
    torch.manual_seed(seed)
    model = NextTokenModel(vocab_size, embedding_dim)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
