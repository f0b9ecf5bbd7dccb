"""The protocol pieces of `minicpmv-gguf serve` (OpenAI-compatible chat completions), independent of the engine.

- requests: the request's pydantic models and validation; task: the frozen ChatTask the engine runs.
- toolcalls: the streamed reply parser (content, reasoning, tool calls) and the OpenAI delta/message shapes.
- grammar: response_format as a GBNF grammar. images: image_url to RGB pixels. errors: OpenAI error bodies.

Nothing is re-exported here, so that importing one module does not import the others' dependencies.
"""
