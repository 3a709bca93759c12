"""Text models. Each takes token ids (N, L) int64 (0 = padding) and, for the synthesis methods, a
dense synthetic input it decodes through its embedding, so a decoded update moves every tensor,
the embedding included. ``synthetic_shape`` is the shape of one synthetic sample.

``textbag`` (the authors' TextClassification): EmbeddingBag(V, 64, mean over the non-padding
tokens) -> Linear(64, 64) -> leaky ReLU -> Linear(64, C); 6,317,060 parameters at V = 98,635 and
C = 4. Synthetic sample: a weight vector over the vocabulary, x (V,), embedded as x @ E. A real
document is the special case x = its token frequencies (counts / length), for which x @ E is
exactly the bag's mean: the two paths agree (the authors' synthetic path sums while their bag
averages; here both are the mean).

``transformer``: token embedding (V, 64) + learned positions (128, 64) -> 4 encoder layers
(d = 64, 4 heads, feed-forward 128, ReLU, dropout 0, post-norm) -> mean over non-padding
positions -> Linear(64, C). Synthetic sample: soft tokens at ``SYNTH_LEN`` = 4 positions, x (4, V),
each row a weight vector over the vocabulary embedded as x @ E (a one-hot row is a real token).
Why soft tokens: they reach the token embedding (synthetic embeddings would leave its update,
most of the parameters, undecodable) and the positional embedding of the first 4 positions. The
cost is 4 V numbers a sample: 4 x 98,635 x 4 = 1,578,160 bytes in float32, 394,540 with 8-bit
features, against 25.8 MB for the dense model at V = 98,635.

``OnVocab`` wraps either model so that a synthetic sample is K numbers, whatever V: weights on K token
ids (x = scatter into the vocabulary) or coordinates in a (K, V) basis (x = w B). Not wired into the CLI;
measured by benchmarks/text_synthesis.py (issue 31).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

SYNTH_LEN = 4


class TextBag(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, num_classes)
        self.act = nn.LeakyReLU()
        self.synthetic_shape = (vocab_size,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            h = x @ self.embedding.weight               # weights over the vocabulary
        else:
            h = self.embedding(x)                       # mean over the non-padding tokens
        return self.fc2(self.act(self.fc1(h)))


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, max_len: int = 128, dim: int = 64, heads: int = 4,
                 ff: int = 128, layers: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, num_classes)
        self.max_len = max_len
        self.synthetic_shape = (SYNTH_LEN, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():                        # (N, SYNTH_LEN, V) soft tokens
            h = x @ self.embedding.weight
            keep = torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
            pad = None
        else:                                            # (N, L) token ids
            x = x[:, :self.max_len]
            h = self.embedding(x)
            pad = x == 0
            pad = pad & ~pad.all(1, keepdim=True)        # an empty document attends to its padding
            keep = (~pad).to(h.dtype)
        h = h + self.position.weight[:h.shape[1]]
        with sdpa_kernel(SDPBackend.MATH):  # attention as plain tensor ops: 3SFC differentiates it twice
            h = self.encoder(h, src_key_padding_mask=pad)
        h = (h * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp_min(1.0)
        return self.fc(h)


class OnVocab(nn.Module):
    """A text model whose synthetic samples are small: w (..., K) becomes x (..., V) by a scatter onto K
    token ids, x = scatter(w, ``ids``) into zeros (``ids`` (K,) distinct), or by a shared basis, x = w
    ``basis`` (``basis`` (K, V)); the model sees x. Real inputs (token ids) pass through. Its parameters
    are the model's, in the same order, so 3SFC's search and decoder take it as the model and search
    over w: a payload of M K numbers, whatever V (benchmarks/text_synthesis.py, issue 31)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor | None = None, basis: torch.Tensor | None = None):
        super().__init__()
        if (ids is None) == (basis is None):
            raise ValueError("OnVocab: give exactly one of ids and basis")
        self.model = model
        self.vocab_size = model.embedding.weight.shape[0]
        self.ids, self.basis = ids, basis
        k = len(ids) if ids is not None else basis.shape[0]
        self.synthetic_shape = (*model.synthetic_shape[:-1], k)

    def lift(self, w: torch.Tensor) -> torch.Tensor:
        """x (..., V) from w (..., K): linear in w."""
        if self.basis is not None:
            return w @ self.basis.to(device=w.device, dtype=w.dtype)
        return w.new_zeros(*w.shape[:-1], self.vocab_size).index_copy(-1, self.ids.to(w.device), w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.model(self.lift(w) if w.is_floating_point() else w)
