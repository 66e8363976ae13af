"""textless-lib's code HiFi-GAN checkpoint format written by hand from its key names (a small config, random
weights): what the vocoder tests load (tests/test_code_hifigan.py, tests/test_vocoders.py)."""
import json
from pathlib import Path

import torch

# a small textless-lib config: x320 (50 Hz units), two residual-block kernels, a duration predictor
TEXTLESS_CFG = {
    "resblock": "1", "upsample_rates": [4, 4, 4, 5], "upsample_kernel_sizes": [8, 8, 8, 11],
    "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20, "embedding_dim": 8, "model_in_dim": 8, "code_hop_size": 320, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}


def textless_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A generator state dict with textless-lib's names (CodeGenerator / ResBlock / VariancePredictor) and
    old-style weight norm (``weight_g`` (dim 0 slices, 1, 1), ``weight_v``), random values. Residual blocks as
    HiFi-GAN names them: resblock "1" three ``convs1`` + three ``convs2``, resblock "2" two ``convs``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    def wn(name, shape):
        return {f"{name}.weight_v": rnd(*shape), f"{name}.weight_g": rnd(shape[0], 1, 1).abs() + 0.05}

    e, ch = cfg["embedding_dim"], cfg["upsample_initial_channel"]
    s = {"dict.weight": rnd(cfg["num_embeddings"], e), "conv_pre.bias": rnd(ch)}
    s.update(wn("conv_pre", (ch, e, 7)))
    k = 0
    for i, kern in enumerate(cfg["upsample_kernel_sizes"]):
        c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
        s.update(wn(f"ups.{i}", (c_in, c_out, kern)))  # ConvTranspose1d weight: (in, out, k)
        s[f"ups.{i}.bias"] = rnd(c_out)
        for rk in cfg["resblock_kernel_sizes"]:
            parts, n_convs = (("convs1", "convs2"), 3) if str(cfg.get("resblock", "1")) == "1" else (("convs",), 2)
            for part in parts:
                for m in range(n_convs):
                    s.update(wn(f"resblocks.{k}.{part}.{m}", (c_out, c_out, rk)))
                    s[f"resblocks.{k}.{part}.{m}.bias"] = rnd(c_out)
            k += 1
    c_last = ch // 2 ** len(cfg["upsample_rates"])
    s.update(wn("conv_post", (1, c_last, 7)))
    s["conv_post.bias"] = rnd(1)
    dp = cfg["dur_predictor_params"]
    h = dp["var_pred_hidden_dim"]
    s.update({"dur_predictor.conv1.0.weight": rnd(h, dp["encoder_embed_dim"], 3), "dur_predictor.conv1.0.bias": rnd(h),
              "dur_predictor.ln1.weight": torch.ones(h), "dur_predictor.ln1.bias": torch.zeros(h),
              "dur_predictor.conv2.0.weight": rnd(h, h, 3), "dur_predictor.conv2.0.bias": rnd(h),
              "dur_predictor.ln2.weight": torch.ones(h), "dur_predictor.ln2.bias": torch.zeros(h),
              "dur_predictor.proj.weight": rnd(1, h), "dur_predictor.proj.bias": torch.tensor([1.0])})
    return s


def write_textless(folder: Path, cfg: dict = TEXTLESS_CFG, state: dict | None = None, name: str = "hifigan_test"):
    ckpt = folder / f"{name}.pt"
    torch.save({"generator": textless_state(cfg) if state is None else state}, ckpt)
    (folder / f"{name}_config.json").write_text(json.dumps(cfg))
    return ckpt
