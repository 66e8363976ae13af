"""Generation from the SpeechLM decoder (:class:`syllablelm.models.gpt.GPT`), with and without per-token overhead.

A decode step of a 90M decoder at batch 1 is a few hundred small kernels: launched one by one from Python (the
``eager`` path) their launch cost dominates on a GPU. :meth:`GPT.decode_step` fixes every shape (one token, the
whole preallocated KV cache behind a mask, the position as a tensor), so the step can be captured once in a CUDA
graph and replayed for every token (``cuda_graph``), or compiled (``compiled``). All modes give the same tokens up
to float rounding: greedy tokens are identical in float32 (tests/test_generation.py, tests/test_cuda.py).
"""
from __future__ import annotations

from typing import Protocol

import torch

DECODE_MODES = ("eager", "static", "cuda_graph", "compiled")  # generate(decode=...)


class DecoderShape(Protocol):
    """What the cache needs of a decoder's config (``syllablelm.models.gpt.GPTConfig`` has it; gpt.py imports this
    module, so the config class is not imported here)."""

    n_layer: int
    n_head: int
    n_embd: int


class KVCache:
    """Keys and values of every layer, preallocated to ``max_len`` positions and written in place (``torch.cat``
    per step would copy the whole cache for every new token). ``length`` = positions already filled; the next
    forward's tokens take positions ``length, length + 1, ...``."""

    def __init__(self, config: DecoderShape, batch: int, max_len: int, device, dtype):
        shape = (config.n_layer, batch, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H, max_len, hd)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, H, T, hd) after the filled positions; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions, {end} needed")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H, end, hd)

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's ``k, v`` (B, H, 1, hd) at ``pos`` (a (1,) long tensor, on the cache's device) and
        return the whole buffers (B, H, max_len, hd): the shapes never change, so a decode step that uses this
        can be captured once in a CUDA graph and replayed for every token. ``length`` is not touched."""
        self.k[layer].index_copy_(2, pos, k)
        self.v[layer].index_copy_(2, pos, v)
        return self.k[layer], self.v[layer]


def generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None, stop_at_eos: bool = False,
             decode: str = "auto") -> torch.Tensor:
    """Continue ``prompt`` (T,) or (B, T) ids by ``max_new_tokens``: returns (B, T + new) (prompt included).

    The prompt is used as given: start it with ``model.bos`` to match training (an unconditional sample is
    ``prompt=[[bos]]``). ``temperature=0`` is greedy; otherwise sampling from the softmax at ``temperature``,
    restricted to the ``top_k`` most likely ids when given, drawing from ``generator``. With ``use_cache`` the
    prompt runs once and every later step runs one token against the KV cache (same logits as a full
    forward, up to float rounding). ``stop_at_eos``: finished rows are filled with EOS and the loop ends
    when every row has produced one.

    ``decode`` (with the cache), how each step runs: ``"eager"`` (a forward per token over the filled part of
    the cache); ``"static"`` (:meth:`GPT.decode_step`: fixed shapes, the whole cache behind a mask);
    ``"cuda_graph"`` (the static step captured once in a CUDA graph and replayed: no per-kernel launch cost,
    CUDA only); ``"compiled"`` (the static step through ``torch.compile``); ``"auto"``: ``cuda_graph`` on a
    CUDA device, else ``eager``. All give the same tokens up to float rounding (tests/test_generation.py).
    """
    idx = prompt[None] if prompt.dim() == 1 else prompt
    idx = idx.to(model.lm_head.weight.device, torch.long)
    B, T = idx.shape
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(f"{T} + {max_new_tokens} tokens exceed the model's {model.config.block_size} positions")
    if decode == "auto":
        decode = "cuda_graph" if idx.device.type == "cuda" else "eager"
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES} or 'auto', got {decode!r}")
    if decode == "cuda_graph" and idx.device.type != "cuda":
        raise ValueError("decode='cuda_graph' needs the model on a CUDA device")
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)  # no torch.cat per step
    out[:, :T] = idx
    dtype = model.lm_head.weight.dtype
    cache = KVCache(model.config, B, T + max_new_tokens, idx.device, dtype) if use_cache else None
    step = None
    if use_cache and decode != "eager" and max_new_tokens > 1:
        step = static_stepper(model, decode, B, T + max_new_tokens, cache)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    end = T
    for i in range(max_new_tokens):
        if step is not None and i > 0:  # the prompt (i == 0) runs once through the ordinary forward
            logits = step(out[:, end - 1:end], end - 1).float()  # (B, V + 1)
        else:
            logits, _ = model(out[:, end - 1:end] if use_cache and i > 0 else out[:, :end], cache=cache)
            logits = logits[:, -1].float()  # (B, V + 1)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
        if stop_at_eos:
            nxt = nxt.masked_fill(done[:, None], model.eos)
            done |= nxt[:, 0] == model.eos
        out[:, end:end + 1] = nxt
        end += 1
        if stop_at_eos and bool(done.all()):
            break
    return out[:, :end]


def static_stepper(model, decode: str, batch: int, max_len: int, cache: KVCache):
    """``step(token (B, 1), position int) -> logits (B, V + 1)`` running :meth:`decode_step` the way ``decode``
    says; the token and position go through fixed input buffers."""
    device = model.lm_head.weight.device
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    if decode == "static":
        fn = model.decode_step
    elif decode == "compiled":
        key = (batch, max_len, str(device), str(model.lm_head.weight.dtype))
        compiled = model.__dict__.setdefault("_compiled_decode", {})
        if key not in compiled:
            compiled[key] = torch.compile(model.decode_step, dynamic=False)
        fn = compiled[key]
    else:  # cuda_graph: warm up on a side stream (allocator, cuBLAS handles), then capture one step
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                model.decode_step(token, pos, cache)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model.decode_step(token, pos, cache)  # writes position 0 of the cache: rewritten later

        def replay(t: torch.Tensor, p: int) -> torch.Tensor:
            token.copy_(t)
            pos.fill_(p)
            graph.replay()
            return logits
        return replay

    def run(t: torch.Tensor, p: int) -> torch.Tensor:
        token.copy_(t)
        pos.fill_(p)
        return fn(token, pos, cache)
    return run
