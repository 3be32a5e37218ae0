"""Runs a training in a subprocess for the crash tests (not a test module itself).

    python tests/e2e/train_runner.py [--recipe NAME] [--kill-at-step N] [--kill-in-save K] key=value ...

--recipe NAME      the recipe (default: toy).
--kill-at-step N   SIGKILLs this process right after optimizer step N.
--kill-in-save K   SIGKILLs this process in the middle of writing the K-th checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys

from smoltrain.families import load_config
from smoltrain.runs import checkpoint
from smoltrain.train.trainer import Trainer


def main(argv: list[str]) -> None:
    kill_at = kill_in_save = 0
    recipe = "toy"
    while argv and argv[0].startswith("--"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--recipe":
            recipe = value
        elif flag == "--kill-at-step":
            kill_at = int(value)
        elif flag == "--kill-in-save":
            kill_in_save = int(value)

    def kill_after_step(trainer: Trainer) -> None:
        if trainer.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if kill_in_save:
        real_write = checkpoint._to_safetensors
        saves = {"n": 0}

        def write_then_die(state, path):
            real_write(state, path)
            if path.name == checkpoint.MODEL_FILE:
                saves["n"] += 1
                if saves["n"] == kill_in_save:  # model file written, trainer state not yet: die here
                    os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._to_safetensors = write_then_die

    Trainer(load_config(recipe, argv), callbacks=[kill_after_step]).fit()


if __name__ == "__main__":
    main(sys.argv[1:])
