"""Applications built on the library: solving and drawing puzzles, text generation, the demos."""
