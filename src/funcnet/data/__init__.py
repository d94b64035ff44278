"""Text and activations: corpora (built-in, files, datasets), tokenization with character spans,
the on-disk activation store, and recording neuron signals into it."""
from funcnet.data.corpus import Corpus, Document, TokenizedCorpus, TokenSequence, load_corpus, tokenize
from funcnet.data.record import collect, parse_layers, parse_signals, record
from funcnet.data.store import ActivationStore

__all__ = ["Corpus", "Document", "TokenizedCorpus", "TokenSequence", "load_corpus", "tokenize", "collect",
           "parse_layers", "parse_signals", "record", "ActivationStore"]
