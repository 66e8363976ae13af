"""Syllable units: pooled segment features -> k-means -> Ward merge -> dedup, and the tokenizer that does it all.

- :mod:`.quantizer`: pooling, standardisation, ``UnitQuantizer`` and dedup;
- :mod:`.clustering`: k-means and Ward (also the LossPred teacher's frame labels);
- :mod:`.frame_labels`: MFCC or hidden-layer frame features for masked-prediction targets;
- :mod:`.tokenizer`: ``Tokenizer`` (audio -> units) and the tokenizer checkpoint format;
- :mod:`.released`: the authors' released SylBoost models imported as tokenizer checkpoints.
"""
