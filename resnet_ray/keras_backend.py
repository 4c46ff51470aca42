"""The single place the project imports TensorFlow and Keras from."""

import os

from . import console
from .errors import UserError

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", console.tf_log_level())

with console.quiet_stderr():
    import tensorflow as tf
    import tf_keras as keras

# MultiWorkerMirroredStrategy logs every collective it builds at INFO: hundreds of lines
# that bury the one progress line per epoch.
tf.get_logger().setLevel("ERROR")


def check_keras_flavour() -> None:
    """Fail early and clearly where Keras 3 slipped in, instead of deep inside a strategy."""
    if not keras.__version__.startswith("2."):
        raise UserError(
            f"tf_keras {keras.__version__} is not Keras 2; install tf-keras matching TensorFlow "
            f"{tf.__version__} (pip install 'tf-keras=={tf.__version__}')"
        )
    if not tf.keras.__name__.startswith("tf_keras"):
        raise UserError(
            "tensorflow was imported before TF_USE_LEGACY_KERAS=1 was set, so tf.keras is Keras "
            f"3 ({tf.keras.__name__}); MultiWorkerMirroredStrategy fails with it (keras#20585). "
            "Set TF_USE_LEGACY_KERAS=1 in the environment (for Ray: runtime_env env_vars) "
            "or import resnet_ray before tensorflow."
        )


__all__ = ["tf", "keras", "check_keras_flavour"]
