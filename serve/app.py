"""`serve run serve.app:app` from the repository root: the model in $RESNET_RAY_MODEL
(default models/tuned). serve/config.yaml is the configurable form of the same app."""

import os

from resnet_ray.serve import DigitService
from resnet_ray.modeldir import read_metadata

MODEL_DIR = os.path.abspath(os.environ.get("RESNET_RAY_MODEL", "models/tuned"))
read_metadata(MODEL_DIR)  # a clear error before any replica starts

app = DigitService.bind(MODEL_DIR)
