"""A small offline instruction set for tests and the chat demo: nothing is downloaded.

Three templated tasks with exact string answers:

* ``add``: "What is 17 plus 25?" -> "42" (operands 0-49);
* ``reverse``: "Reverse the word candle." -> "eldnac" (a built-in word list);
* ``capital``: "What is the capital of France?" -> "Paris" (a built-in table).

The held-out split never shares a prompt with train: an ``add`` or ``reverse`` item (its operands / word) is
held out or not by a stable hash of it, whatever the phrasing, so held-out answers must be computed, not
remembered; a capital cannot be computed, so a ``capital`` item is held out by (country, phrasing): the
country is seen in train under other phrasings. Train lines are drawn with replacement from the train
items; held-out lines are distinct items, the tasks interleaved.

Lines are MiniMind's formats (``data sft`` / ``data dpo`` read them): SFT ``{"conversations": [user,
assistant]}``; DPO ``{"chosen": [user, right answer], "rejected": [user, a wrong answer]}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoltrain.errors import ConfigError
from smoltrain.fileio import atomic_write_text

HELDOUT_SHARE = 8  # one item in 8 is held out
SPLITS = ("train", "heldout")
KINDS = ("sft", "dpo")

_WORDS = (
    "apple", "river", "candle", "garden", "pencil", "window", "silver", "forest", "rocket", "planet", "bridge",
    "tunnel", "castle", "orange", "yellow", "purple", "summer", "winter", "spring", "autumn", "monkey", "turtle",
    "rabbit", "dragon", "basket", "button", "coffee", "cookie", "doctor", "engine", "farmer", "guitar", "hammer",
    "island", "jacket", "kitten", "ladder", "magnet", "needle", "parrot", "pillow", "puzzle", "saddle", "shadow",
    "spider", "stone", "table", "train", "cloud", "light", "music", "paper", "horse", "lemon", "piano", "queen",
    "sugar", "tiger", "water", "zebra", "bread", "chair", "dream", "flame",
)
_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Russia", "Moscow"),
    ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Hungary", "Budapest"),
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Cuba", "Havana"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Israel", "Jerusalem"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
)
_TEMPLATES = {
    "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "{a} + {b} = ?"),
    "reverse": ("Reverse the word {w}.", "Spell {w} backwards.", "Write {w} with its letters in reverse order."),
    "capital": ("What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"),
}
TASKS = tuple(_TEMPLATES)


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str  # the exact expected reply
    wrong: str  # a plausible wrong reply (the rejected side of a DPO pair)


def _held_out(*key: object) -> bool:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:4], "little") % HELDOUT_SHARE == 0


def _items(task: str) -> list[tuple[Any, int]]:
    """Every (key, template index) of `task`."""
    keys: list[Any]
    if task == "add":
        keys = [(a, b) for a in range(50) for b in range(50)]
    elif task == "reverse":
        keys = list(_WORDS)
    else:
        keys = list(range(len(_CAPITALS)))
    return [(key, t) for key in keys for t in range(len(_TEMPLATES[task]))]


def _in_split(task: str, key: Any, template: int, split: str) -> bool:
    held = _held_out(task, key, template) if task == "capital" else _held_out(task, key)
    return held == (split == "heldout")


def _example(task: str, key: Any, template: int) -> Example:
    text = _TEMPLATES[task][template]
    if task == "add":
        a, b = key
        total = a + b
        wrong = total + (1 if (a * 7 + b) % 2 else -1) * (1 + (a + b) % 3)
        return Example(task, text.format(a=a, b=b), str(total), str(wrong))
    if task == "reverse":
        word = key
        return Example(task, text.format(w=word), word[::-1], word)
    country, capital = _CAPITALS[key]
    other = _CAPITALS[(key + 1 + key % 5) % len(_CAPITALS)][1]
    return Example(task, text.format(c=country), capital, other)


def instruction_examples(split: str = "train", count: int = 1000, seed: int = 0) -> list[Example]:
    """`count` examples of `split` ("train": drawn with replacement; "heldout": distinct, tasks interleaved)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} must be one of {SPLITS}")
    if count < 1 or seed < 0:
        raise ConfigError(f"count={count} must be >= 1 and seed={seed} >= 0")
    rng = np.random.default_rng(seed)
    pools = {task: [item for item in _items(task) if _in_split(task, *item, split)] for task in TASKS}
    if split == "train":
        out = []
        for _ in range(count):
            task = TASKS[int(rng.integers(len(TASKS)))]
            key, template = pools[task][int(rng.integers(len(pools[task])))]
            out.append(_example(task, key, template))
        return out
    total = sum(len(p) for p in pools.values())
    if count > total:
        raise ConfigError(f"count={count}: the held-out split has only {total} distinct items; ask for at most that")
    orders = {task: [pool[i] for i in rng.permutation(len(pool))] for task, pool in pools.items()}
    out, depth = [], 0
    while len(out) < count:
        for task in TASKS:
            if depth < len(orders[task]) and len(out) < count:
                out.append(_example(task, *orders[task][depth]))
        depth += 1
    return out


def _messages(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def instruction_line(example: Example, kind: str = "sft") -> dict[str, Any]:
    """The MiniMind jsonl object of one example."""
    if kind == "sft":
        return {"conversations": _messages(example.prompt, example.answer)}
    return {"chosen": _messages(example.prompt, example.answer), "rejected": _messages(example.prompt, example.wrong)}


def write_instructions(output: Path, kind: str = "sft", count: int = 1000, seed: int = 0,
                       split: str = "train") -> dict[str, Any]:
    """Write `count` lines of `split` as `kind` ("sft" or "dpo") jsonl to `output` (atomically)."""
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} must be one of {KINDS}")
    examples = instruction_examples(split, count, seed)
    text = "".join(json.dumps(instruction_line(e, kind), ensure_ascii=False) + "\n" for e in examples)
    atomic_write_text(Path(output), text)
    return {"count": len(examples), "kind": kind, "split": split, "output": str(output)}
