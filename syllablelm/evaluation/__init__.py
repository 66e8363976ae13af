"""Scores: boundary, clustering and bitrate metrics, the tuned-shift protocols, significance, LM pair sets, figures.

- :mod:`.boundary_metrics`: precision / recall / F1 / R-value as pure functions and count states (both protocols);
- :mod:`.cluster_metrics`: cluster purity, syllable purity and SNMI;
- :mod:`.token_metrics`: token rate and bitrate, before and after dedup;
- :mod:`.scoring`: a test split scored with the shift (and the envelope baseline) tuned on a dev split;
- :mod:`.significance`: the paired bootstrap over utterances;
- :mod:`.pair_sets`: sWUGGY / sBLIMP / tSC pair sets read from the ZeroSpeech layout, and pair accuracy;
- :mod:`.lm_scoring`: those pair sets scored with a SpeechLM over a tokenizer's units;
- :mod:`.plots`: boundaries over a spectrogram, the LossPred matrix.
"""
