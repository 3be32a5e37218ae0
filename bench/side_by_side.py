"""What the side-by-side benches (time_to_accuracy.py, lm_time_to_loss.py) share for ``--report``: reading the
``--json`` files of earlier runs, and joining the pairs of single-side runs taken at the same time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(paths: list[str], needed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The results in ``paths``; a ValueError naming the file when one is missing, not JSON, or not a result of
    this bench (an object lacking one of the ``needed`` keys)."""
    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}; give a file an earlier --json "
                             "wrote") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not JSON ({error}); give a file an earlier --json wrote") from None
        missing = [key for key in needed if not isinstance(result, dict) or key not in result]
        if missing:
            raise ValueError(f"{path} is not a result of this bench (no {', '.join(missing)}); give a file an "
                             "earlier --json of the same script wrote")
        results.append(result)
    return results


def join_pairs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair i of each result joined into one pair (its sides in the results' order), for as many pairs as every
    result has."""
    pairs = []
    for i in range(min(len(r["pairs"]) for r in results)):
        pair: dict[str, Any] = {"order": []}
        for r in results:
            for name in r["pairs"][i]["order"]:
                pair[name] = r["pairs"][i][name]
                pair["order"].append(name)
        pairs.append(pair)
    return pairs
