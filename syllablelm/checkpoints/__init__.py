"""Reading and writing the model files this suite uses, without fairseq and without Lightning. Each file format
has one owner module, the only one that names its keys (docs/architecture.md, "File formats and their owners"):

- :mod:`.backbone`: :func:`load_backbone` / :func:`load_teacher` / :func:`describe` for every backbone format (HF
  folders, fairseq HuBERT and data2vec 2.0 ``.pt``, this suite's ``.ckpt`` and tokenizer checkpoints), dispatching
  to the owners below;
- :mod:`.suite`: this suite's Lightning checkpoints (teacher, SylBoost, SpeechLM);
- :mod:`.tokenizer_file`: the tokenizer checkpoint (``syllablelm.tokenizer/1``) and the older files it replaces;
- :mod:`.fairseq`: unpickling fairseq files with stub classes, plain configs, key mapping, strict loading;
- :mod:`.fairseq_hubert`: fairseq HuBERT pretraining checkpoints, both ways;
- :mod:`.fairseq_data2vec2`: fairseq data2vec 2.0 checkpoints, both ways;
- :mod:`.kmeans`: k-means centroids (``.npy`` both ways, fairseq joblib files read) and the nearest-centroid labeler.
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
from syllablelm.checkpoints.fairseq_hubert import NUM_SPECIAL, load_fairseq_hubert, save_fairseq_style_checkpoint
from syllablelm.checkpoints.kmeans import KMeansLabeler, load_kmeans_centroids, save_kmeans_centroids

__all__ = ["Backbone", "checkpoint_format", "describe", "load_backbone", "load_encoder", "load_teacher",
           "is_fairseq_data2vec2", "load_fairseq_data2vec2", "save_fairseq_style_data2vec2", "CheckpointError",
           "load_fairseq_state", "stub_pickle", "to_plain", "NUM_SPECIAL", "load_fairseq_hubert",
           "save_fairseq_style_checkpoint", "KMeansLabeler", "load_kmeans_centroids", "save_kmeans_centroids"]
