"""The LLM handler (``BATCH_HANDLER=batcher.llm.handler:summarize``) and an OpenAI-shaped fake LLM
to run it against: an application of the queue, behind the ``[llm]`` extra (openai)."""
