"""Run directories: their layout, checkpoint format and loading a trained run."""
