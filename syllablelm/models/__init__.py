"""Networks, framework-free (torch and ``transformers`` only), and what training them needs besides Lightning.

- :mod:`.hubert`: the HuBERT-style masked-prediction teacher on ``transformers.HubertModel``;
- :mod:`.data2vec2`: the data2vec 2.0 audio encoder (inference / fine-tuning part);
- :mod:`.encoder`: ``SpeechEncoder``, any of them cut after its feature layer (SylBoost's student and teacher);
- :mod:`.gpt` / :mod:`.generation`: the SpeechLM decoder and its KV-cache generation;
- :mod:`.common`: waveform normalisation shared by the encoders;
- :mod:`.schedules`: learning-rate multipliers; :mod:`.flops`: FLOPs per batch for MFU.
"""
