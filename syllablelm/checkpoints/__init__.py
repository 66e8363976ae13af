"""Reading (and, for tests, writing) the model files this suite uses, without fairseq and without Lightning.

- :mod:`.backbone`: :func:`load_backbone` / :func:`load_teacher` / :func:`describe` for every format (HF folders,
  fairseq HuBERT and data2vec 2.0 ``.pt``, this suite's ``.ckpt`` and tokenizer checkpoints);
- :mod:`.fairseq`: unpickling fairseq files with stub classes, plain configs, key mapping, strict loading;
- :mod:`.fairseq_hubert` / :mod:`.fairseq_hubert_write`: fairseq HuBERT pretraining checkpoints, both ways;
- :mod:`.fairseq_data2vec2`: fairseq data2vec 2.0 checkpoints both ways;
- :mod:`.kmeans`: k-means models (fairseq joblib files or ``.npy`` centroids) and the nearest-centroid labeler.
"""
from syllablelm.checkpoints.backbone import (
           Backbone,
           checkpoint_format,
           describe,
           load_backbone,
           load_encoder,
           load_teacher,
)
from syllablelm.checkpoints.fairseq import CheckpointError, load_fairseq_state, stub_pickle, to_plain
from syllablelm.checkpoints.fairseq_data2vec2 import (
    is_fairseq_data2vec2,
    load_fairseq_data2vec2,
    save_fairseq_style_data2vec2,
)
from syllablelm.checkpoints.fairseq_hubert import NUM_SPECIAL, load_fairseq_hubert
from syllablelm.checkpoints.fairseq_hubert_write import save_fairseq_style_checkpoint
from syllablelm.checkpoints.kmeans import KMeansLabeler, load_kmeans_centroids

__all__ = ["Backbone", "checkpoint_format", "describe", "load_backbone", "load_encoder", "load_teacher",
           "is_fairseq_data2vec2", "load_fairseq_data2vec2", "save_fairseq_style_data2vec2", "CheckpointError",
           "load_fairseq_state", "stub_pickle", "to_plain", "NUM_SPECIAL", "load_fairseq_hubert",
           "save_fairseq_style_checkpoint", "KMeansLabeler", "load_kmeans_centroids"]
