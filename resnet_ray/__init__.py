"""resnet-ray: train, tune and serve a Keras ResNet-50 for hand-sign digits on Ray."""

import os

# Keras 3 (TensorFlow's default) breaks inside MultiWorkerMirroredStrategy; the project uses
# tf-keras (Keras 2), and pins the flag so that any later `tf.keras` import, such as Ray's
# Keras helpers', resolves to the same flavour. Models saved by one flavour do not load in
# the other, so training and serving must agree.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# This process too (a --num-workers 0 run, evaluation, export), when it has not imported
# TensorFlow yet; a local Ray cluster's workers inherit it (see runtime.WORKER_ENV_VARS).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
