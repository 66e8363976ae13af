"""Syllable boundaries: the exact min-cut dynamic programs, the one segmenter, LossPred and the baselines.

- :mod:`.dp`: batched segment-cost tables, the K-segment DP, backtracking and the rate-search table;
- :mod:`.mincut`: the SylBoost SSE min-cut with rate control and the LossPred normalized cut, on top of :mod:`.dp`;
- :mod:`.segmenter`: ``Segmenter`` (features -> segments), used by SylBoost, its regeneration and the tokenizer;
- :mod:`.losspred`: LossPred, a teacher's masked-prediction losses -> similarity matrix -> boundaries;
- :mod:`.baselines`: uniform, envelope-minima and log-mel min-cut segmentations.
"""
