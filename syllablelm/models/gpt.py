"""The SpeechLM decoder (SyllableLM stage 4): a GPT over unit ids, framework-free (torch only).

    model = GPT(GPTConfig.base(vocab_size=8192))
    logits, loss = model(idx, targets)                          # (B, T, V + 1), token-mean CE over targets != -100
    logprob, ntok = model.log_likelihood([units_a, units_b])     # per sequence: BOS u1..un -> u1..un EOS
    out = model.generate(torch.tensor([[model.bos]]), 100, temperature=0.8, top_k=50)

Architecture (docs/algorithms.md, "Stage 4"): pre-LayerNorm blocks, causal attention with qkv projections **without**
bias, GELU MLP x4, dropout 0.1, learned absolute positions (3000 slots), input and output embeddings tied and
**no final LayerNorm** (the last block's residual stream goes straight to the tied output projection, as in
fairseq's ``transformer_lm``). BOS and EOS share one id, ``vocab_size``: units are ``0 .. vocab_size - 1`` and
the embedding table has ``vocab_size + 1`` rows. One such token therefore both ends an utterance and starts
the next, so a packed stream reads ``S u1 .. un S v1 .. vm S``.

Two styles (:attr:`GPTConfig.style`) differ only in where dropout acts and how weights start:

- ``"authors"`` (default): the authors' ``cluster_alan`` model (``ClusterAlanModel`` with ``ValleBlock``s).
  Dropout ``p = dropout`` after the attention output projection and after the MLP (their ``post_mlp_drop``),
  nowhere else: attention weights 0, none inside the MLP, none on the embeddings. Token and position tables
  ``N(0, 1/sqrt(n_embd))``; every Linear ``N(0, 0.02)`` with zero biases (fairseq ``init_bert_params``);
  LayerNorms torch's default; no depth scaling.
- ``"nanogpt"``: this project's earlier decoder (nanoGPT/GPT-2). Dropout also on the summed embeddings and on
  the attention weights; every weight, the embedding tables included, ``N(0, 0.02)``, and the residual output
  projections (``c_proj``) ``N(0, 0.02 / sqrt(2 n_layer))``.

Both have the same parameters (same ``state_dict`` keys and shapes), so a checkpoint of either loads into
either; checkpoints saved before ``style`` existed carry no such field and get the default.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from syllablelm.models import generation
from syllablelm.models.generation import KVCache

STYLES = ("authors", "nanogpt")  # GPTConfig.style (module docstring)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a narrower float type (bf16/fp16 autocast), else unchanged: float64 logits
    stay float64, so a float64 model scores exactly (a cast to float32 loses ~1e-6 per token, more or less
    depending on the BLAS)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class GPTConfig:
    """Everything needed to rebuild the decoder (plain fields: YAML and ``save_hyperparameters`` friendly)."""

    vocab_size: int = 8192  # units; the table has one more row: BOS = EOS = vocab_size
    block_size: int = 3000  # learned position slots = the longest sequence (BOS included) the model can see
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1  # where it acts depends on `style` (module docstring)
    bias: bool = False  # qkv projections only; the output projection, MLP and LayerNorms keep their biases
    style: Literal["authors", "nanogpt"] = "authors"  # dropout positions and initialisation (module docstring)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"GPTConfig.style must be one of {STYLES}, got {self.style!r}")

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        """Trains on a laptop CPU in minutes (about 0.9M parameters at vocab 128)."""
        kw = {"vocab_size": 128, "block_size": 512, "n_layer": 4, "n_head": 4, "n_embd": 128}
        return cls(**{**kw, **overrides})

    @classmethod
    def base(cls, **overrides) -> GPTConfig:
        """SyllableLM-90M: 12 layers, 12 heads, width 768 (93.6M parameters at vocab 8192, see
        :meth:`GPT.num_parameters`)."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides) -> GPTConfig:
        """The paper's ~300M model. Its shape is not in the released code: this is an OPT-350M-like 24 layers,
        16 heads, width 1024 (313.7M parameters at vocab 8192), this project's choice."""
        return cls(**{"n_layer": 24, "n_head": 16, "n_embd": 1024, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _inference(method):
    """No gradients and no dropout (the module's train/eval mode is restored afterwards): scores and samples
    taken in the middle of training must not depend on dropout."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)
    return wrapper


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        # dropout on the attention weights: the nanoGPT style only (the authors' attention_dropout is 0)
        self.attn_dropout = config.dropout if config.style == "nanogpt" else 0.0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)  # after the output projection (both styles)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if pos is not None:  # static decode: one token at tensor position `pos`, the whole buffer behind a mask
            k, v = cache.write_at(layer, k, v, pos)  # (B, H, max_len, hd)
            visible = (torch.arange(k.shape[2], device=x.device) <= pos).view(1, 1, 1, -1)  # filled ones and this
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # (B, H, 1, hd)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, past + T, hd)
        dropout = self.attn_dropout if self.training else 0.0
        if attn_mask is not None:  # causal and padded keys hidden (GPT.forward's padding_mask)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        elif past == 0:  # plain causal: SDPA's fused kernels handle the mask themselves
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif T == 1:  # one new token sees every cached position: no mask at all
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # several new tokens after a cache: is_causal would align the mask top-left, so build it shifted
            mask = torch.arange(past + T, device=x.device)[None] <= past + torch.arange(T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)  # after the MLP (the authors' post_mlp_drop); none inside it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(config.n_embd), CausalSelfAttention(config)
        self.ln_2, self.mlp = nn.LayerNorm(config.n_embd), MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, pos, attn_mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.bos = self.eos = config.vocab_size  # one id for both
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size + 1, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            # embedding dropout: the nanoGPT style only (Identity keeps the module tree the same)
            "drop": nn.Dropout(config.dropout) if config.style == "nanogpt" else nn.Identity(),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        })  # no ln_f: the residual stream is projected as it is
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size + 1, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one Parameter object
        self.apply(self._init_weights)  # Linear N(0, 0.02), zero biases; Embedding N(0, 0.02); LayerNorm default
        if config.style == "authors":  # tables N(0, 1/sqrt(d)), set after the tied lm_head's Linear init
            for table in (self.transformer.wte, self.transformer.wpe):
                nn.init.normal_(table.weight, mean=0.0, std=1.0 / math.sqrt(config.n_embd))
        else:  # GPT-2: residual projections scaled by depth
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Every parameter once (the tied table counts once, position embeddings included); ``non_embedding``
        leaves out the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` (B, T) ids -> ``(logits (B, T, V + 1), loss)``; ``loss`` is the token-mean cross-entropy over
        ``targets != -100`` (None without targets). With ``cache`` the tokens continue after its filled
        positions, and the cache grows by T. ``padding_mask`` (B, T, True = padding; never position 0) hides
        those positions as keys from every query, as the authors' attention does with their collate's mask
        (:mod:`datamodules.unit_data`, ``collate: authors``); a batch without padding takes the plain causal path."""
        T = idx.shape[1]
        past = 0 if cache is None else cache.length
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} positions, the model has {self.config.block_size}")
        attn_mask = None
        if padding_mask is not None and cache is not None:
            raise ValueError("padding_mask is for whole training batches, not for decoding with a KV cache")
        if padding_mask is not None and bool(padding_mask.any()):
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            attn_mask = causal & ~padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, T, T): True = may attend
        pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, attn_mask=attn_mask)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(x)  # (B, T, V + 1)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(at_least_float32(logits.flatten(0, 1)), targets.flatten(), ignore_index=-100)
        return logits, loss

    @_inference
    def log_likelihood(self, sequences: Sequence[torch.Tensor], batch_size: int = 32, score_eos: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability (nats) and scored-token count of each unit sequence: ``(logprob (N,) float64,
        tokens (N,) int64)``.

        Each sequence is read as in training, ``BOS u1 .. un``, and scores ``u1 .. un`` and then ``EOS``
        (``n + 1`` tokens): with the EOS the score is the probability of the *whole* utterance, not of every
        continuation that starts with it. ``score_eos=False`` scores ``u1 .. un`` only. Sequences are batched
        longest first and right-padded; causal attention keeps padding out of the real positions.
        """
        lengths = [len(s) for s in sequences]
        if max(lengths, default=0) + 1 > self.config.block_size:
            raise ValueError(f"a sequence of {max(lengths)} units needs {max(lengths) + 1} positions, the model "
                             f"has {self.config.block_size}")
        device = self.lm_head.weight.device
        logprob = torch.zeros(len(sequences), dtype=torch.float64)
        tokens = torch.tensor([n + int(score_eos) for n in lengths], dtype=torch.int64)
        order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            T = lengths[rows[0]] + 1
            idx = torch.full((len(rows), T), self.bos, dtype=torch.long, device=device)
            tgt = torch.full((len(rows), T), -100, dtype=torch.long, device=device)
            for b, i in enumerate(rows):
                u = torch.as_tensor(sequences[i], dtype=torch.long, device=device)
                idx[b, 1:len(u) + 1] = u
                tgt[b, :len(u)] = u
                if score_eos:
                    tgt[b, len(u)] = self.eos
            logits, _ = self(idx)  # (b, T, V + 1)
            nll = F.cross_entropy(at_least_float32(logits.flatten(0, 1)), tgt.flatten(), ignore_index=-100,
                                  reduction="none")
            logprob[rows] = -nll.view(len(rows), T).sum(1).double().cpu()  # ignored positions add 0
        return logprob, tokens

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row ``token`` (B, 1) at position ``pos`` ((1,) long tensor) against ``cache``: its logits
        (B, V + 1). Every shape is fixed (the whole cache behind a mask), so CUDA graphs and ``torch.compile`` can
        capture it once; ``pos`` and ``token`` change in place between steps."""
        x = self.transformer.drop(self.transformer.wte(token) + self.transformer.wpe(pos))  # (B, 1, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, pos)
        return self.lm_head(x)[:, -1]  # (B, V + 1)

    @_inference
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Continue ``prompt`` by ``max_new_tokens`` (:func:`syllablelm.models.generation.generate`: sampling,
        greedy, EOS stops, and the decode modes that remove per-token overhead)."""
        return generation.generate(self, prompt, max_new_tokens, **kwargs)
