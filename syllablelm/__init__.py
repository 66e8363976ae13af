"""SyllableLM core: framework-free algorithms (never imports Lightning).

``syllablelm.Tokenizer`` (audio -> syllable units) is imported lazily, so light submodules (the synthesiser,
the syllabifier) do not pull in torch and transformers.
"""
__all__ = ["Tokenizer"]


def __getattr__(name):
    if name == "Tokenizer":
        from syllablelm.units.tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'syllablelm' has no attribute {name!r}")
