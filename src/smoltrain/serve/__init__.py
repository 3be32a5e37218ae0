"""`smoltrain serve`: the OpenAI-compatible API, puzzle solving and the playground page of a run."""
