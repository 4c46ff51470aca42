"""resnet-ray: train, tune and serve a Keras ResNet-50 for hand-sign digits on Ray."""

import os

# Keras 3 (TensorFlow's default since 2.16) breaks inside MultiWorkerMirroredStrategy
# (keras-team/keras#20585, ray-project/ray#47464). The project uses tf-keras (Keras 2)
# directly, and also pins the flag so that any `tf.keras` import made after this one,
# e.g. by Ray's Keras helpers, resolves to the same flavour. Models saved by one
# flavour do not load in the other, so training and serving must agree.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

# Environment every Ray worker, Train worker, Tune trial and Serve replica must start
# with: set before TensorFlow is imported there, which os.environ inside a train loop
# is too late for.
WORKER_ENV_VARS = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Ray Train tees print() into its logger, which shows every progress line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
