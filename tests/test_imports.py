"""What a process imports decides how fast it starts: serving never loads the training code,
and the process that builds the Ray Train trainer (a Tune trial, Train's controller) never
loads TensorFlow, which only the workers use (docs/performance.md, "What the defaults do")."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(*sys.modules)"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


def test_serving_loads_no_training_code():
    loaded = _modules_after("import resnet_ray.serve")
    training = ("resnet_ray.train", "resnet_ray.worker", "resnet_ray.tune", "resnet_ray.cli")
    assert not {m for m in loaded if m.startswith(training)}


def test_building_the_trainer_loads_no_tensorflow(synth_dir, tmp_path):
    loaded = _modules_after(f"""
from resnet_ray.config import TrainConfig
from resnet_ray.plan import resolve
from resnet_ray.train import build_trainer
plan = resolve(TrainConfig(data={str(synth_dir)!r}, model="tiny", num_workers=0,
                           storage={str(tmp_path)!r}), join=None)
build_trainer(plan)  # its backend is what Train's controller unpickles
""")
    assert "resnet_ray.train" in loaded and "tensorflow" not in loaded
