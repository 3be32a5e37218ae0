# Test-time voting on 6x6 Sudoku: accuracy at 1 view and at 8 (bench/RESULTS.md). Usage, from the repository root:
#   PYTHONPATH=src bash bench/test_time_voting.sh [WORK_DIR]
export OMP_NUM_THREADS=1
export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "${1:-/tmp/voting-bench}" && cd "${1:-/tmp/voting-bench}"
python - <<'PY'
import time, json
from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer
t=time.time()
build_sudoku_dataset("data6", "generate", size=6, num_train=2000, num_test=300, num_aug=8, seed=0)
print("built", time.time()-t, flush=True)
cfg = load_config("trm-sudoku-cpu", ["data_paths=[data6]", "run_dir=run6", "resume=none", "max_minutes=2",
                                     "epochs=100000", "eval_interval=100000", "eval_augmentations=8"])
t=time.time()
s = Trainer(cfg).fit()
print("fit+eval", time.time()-t, "steps", s["step"], flush=True)
print(json.dumps({k: v for k, v in s["eval"].items()}, indent=1))
PY
