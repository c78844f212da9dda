"""A prompt cache beyond the slots: sequence states kept in host RAM and on disk, restored instead of recomputed.

Engine-agnostic: states are opaque bytes under their token prefix. The llama.cpp engine saves a
slot's state here before it overwrites the slot's cells, and restores the longest cached prefix of
a new prompt into a slot (``server.engine.llama.seq_state`` does the llama.cpp part).

``keys`` (prefix arithmetic, file names, the identity digest) < ``ram`` (LRU by bytes) and
``disk`` (files that survive a restart) < ``cache`` (both tiers, one lookup); ``stats`` counts.
"""
