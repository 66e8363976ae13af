"""The synthetic corpus and the LM pair sets, spoken by eSpeak NG (the project's stand-in for LibriSpeech).

- :mod:`.corpus`: a LibriSpeech-layout corpus with word / syllable / phone alignments;
- :mod:`.plan`: speakers, sentences and splits, drawn from one seed before anything is spoken;
- :mod:`.espeak`: eSpeak NG through ctypes, with phone timings;
- :mod:`.pairs` / :mod:`.pair_sentences`: sWUGGY / sBLIMP / tSC-style mini-sets.

The command lines are ``experiments/synth.py`` and ``experiments/pairs.py``.
"""
