"""The llama.cpp engine, the only package that imports llama_cpp.

``engine`` (slots, batched steps, prefix reuse) over ``batch`` (what one decode holds),
``slots``, ``vocab``, ``model_info``, ``context_params``, ``sampling`` and ``cpp_log``;
``embeddings`` (an embeddings context on the engine's model); ``model_files`` (GGUF files).
"""
