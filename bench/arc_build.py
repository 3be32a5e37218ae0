"""Wall time and peak memory of the ARC dataset build.

    python bench/arc_build.py [--input-file-prefix ../shared/data/arc/arc-agi] \\
        [--subsets training evaluation concept] [--test-set-name evaluation] [--num-aug 1000] [--seed 42] \\
        [--output-dir DIR] [--keep]

Builds into a temporary directory under /tmp (deleted afterwards unless --keep) and prints the build's
counts, the wall time, the peak resident memory of this process (`VmHWM`, the same figure as
`ru_maxrss`; children are added but the builder starts none) and the size on disk. The reference recipe,
ARC-AGI-1 with ConceptARC and 1000 augmentations, writes about 4M train rows (~7 GB on disk).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from smoltrain.data.arc import build_arc_dataset

DEFAULT_PREFIX = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc" / "arc-agi"


def peak_rss_mib() -> float:
    """Peak resident set of this process plus its waited-for children, in MiB (Linux: ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:  # VmHWM is the same figure on Linux; prefer it when present
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    except OSError:
        pass
    return (own + children) / 1024


def disk_usage_gib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-file-prefix", default=str(DEFAULT_PREFIX))
    parser.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    parser.add_argument("--test-set-name", default="evaluation")
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the built dataset")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="arc-bench-", dir="/tmp")) if args.output_dir is None else None
    output_dir = Path(args.output_dir) if args.output_dir else scratch / "arc"  # type: ignore[operator]
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    try:
        info = build_arc_dataset(
            output_dir,
            input_file_prefix=args.input_file_prefix,
            subsets=args.subsets,
            test_set_name=args.test_set_name,
            num_aug=args.num_aug,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
        wall = time.perf_counter() - started
        size = disk_usage_gib(output_dir)
    finally:
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    counts = info["counts"]
    print("command: python " + " ".join(sys.argv))
    print(f"subsets {' '.join(args.subsets)} (test set {args.test_set_name}), num_aug {args.num_aug}, seed {args.seed}")
    print(
        f"tasks {counts['tasks']:,}  puzzles {counts['puzzles']:,}  identifiers {counts['identifiers']:,}  "
        f"train rows {counts['train_rows']:,}  test rows {counts['test_rows']:,}  "
        f"tasks with fewer versions {counts['tasks_with_fewer_versions']}"
    )
    print(f"wall time {wall:.1f} s (builder's own build_seconds {info['build_seconds']:.1f} s)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (before the build: {rss_before:.0f} MiB)  on disk {size:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
