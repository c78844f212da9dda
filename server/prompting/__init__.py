"""From a conversation to prompt text: chat templates, the Llama 3.1 builder, tools, grammars.

Nothing here knows the engine or the scheduler.
"""
