"""Audio and its annotations: reading and resampling files (soundfile + torchaudio), the energy detector every
stage shares, the 20 ms frame grid, alignment files and the LibriSpeech syllable references, and maximal-onset
syllabification.

- :mod:`.io`: ``read_audio``, ``audio_info``, ``write_audio``, speech regions (energy VAD);
- :mod:`.listing`: ``list_audio`` / ``iter_audio``, the one listing of audio files (links followed, folders once);
- :mod:`.frames`: frame geometry (50 Hz, HuBERT's CNN) and the conversions between seconds, samples and frames;
- :mod:`.alignments`: the alignment-file contract and the checks every stored segment list passes;
- :mod:`.references`: LibriSpeech syllable references as the field distributes them -> alignments;
- :mod:`.syllabify`: maximal-onset syllables over eSpeak NG phoneme names or ARPAbet.
"""
