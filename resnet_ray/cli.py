"""`resnet-ray`: parses arguments and calls the package; a UserError exits 2 without traceback.
Train's flags are generated from TrainConfig (config.add_arguments); nothing imports this."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, console, paths, train, tune
from .errors import UserError, parser_class, run_command

# The distributions --version names: the package's own, then what it runs on.
VERSIONED = (("Ray", "ray"), ("TensorFlow", ("tensorflow", "tensorflow-cpu")),
             ("tf-keras", "tf-keras"), ("OpenVINO", "openvino"))


def _files(out: str, train, test) -> str:
    out = paths.shown(out)
    return (f"{out}/train_signs.h5 ({len(train)} images) and {out}/test_signs.h5 "
            f"({len(test)} images)")


def _data_import(a):
    from .data import import_images, parse_classes

    train, test = import_images(a.images_dir, a.out, parse_classes(a.classes), a.size,
                                a.test_fraction, a.seed, progress=not a.quiet)
    print(f"wrote {_files(a.out, train, test)}, classes {train.classes}, {a.size}x{a.size}")


def _data_sample(a):
    from .data import parse_classes
    from .embedded import sample

    train, test = sample(a.out, parse_classes(a.classes), a.test_fraction, a.seed,
                         progress=False)
    print(f"wrote {_files(a.out, train, test)}, classes {train.classes}, 64x64 photos")


def _data_synth(a):
    from .data import write_signs_dir
    from .synth import synth_data

    if a.train < 1 or a.test < 1:
        raise UserError(f"--train/--test: expected at least 1 image each, got {a.train}/{a.test}")
    if a.folder:
        from .synth import write_synth_folder

        n = write_synth_folder(a.out, a.train + a.test, a.seed)
        out = paths.shown(a.out)
        print(f"wrote {n} JPEG images to {out}/0 ... {out}/5 (64x64; train with --data "
              f"{out}, which splits them by path)")
        return
    train, test = synth_data(a.train, a.test, a.seed)
    write_signs_dir(a.out, train, test)
    print(f"wrote {_files(a.out, train, test)}, classes {train.classes}, 64x64")


def _model_dir(path: str) -> str:
    """A repository's newest version; anything else as given (the command reads its data
    first, and names a missing model directory itself)."""
    from .repository import resolve, versions

    return resolve(path)[0] if versions(path) else path


def _evaluate(a):
    from .evaluate import evaluate, format_report, plot_confusion

    m = evaluate(_model_dir(a.model_dir), a.data, a.backend)
    if a.plots:
        m["confusion_png"] = str(plot_confusion(m, a.plots))
    print(json.dumps(m) if a.json else format_report(m))


def _predict(a):
    from .predict import predict_files

    for path, p in zip(a.images, predict_files(_model_dir(a.model_dir), a.images, a.backend)):
        print(f"{paths.shown(path)}: {p.describe()}")


def _serve(a):
    from .serve_run import serve_foreground

    console.set_verbose(a.verbose)
    serve_foreground(a.model_dir, host=a.host, port=a.port, replicas=a.replicas,
                     backend=a.backend, ingress=a.ingress, access_log=a.access_log,
                     version=a.model_version, watch=a.watch)


def _deploy(a):
    import time

    from . import rollout

    console.set_verbose(a.verbose)
    if a.status:
        print(rollout.status(a.repo, a.app))
        return
    if a.model_version is None:
        raise UserError("--version: expected the version to deploy (or --status)")
    started = time.monotonic()
    replicas = rollout.deploy(a.repo, a.model_version, a.app, a.timeout,
                              eval_data=a.eval, force=a.force)
    print(rollout.serving_line(a.model_version, replicas, time.monotonic() - started))


def _quantize(a):
    from .backends import quantize

    model_dir = _model_dir(a.model_dir)
    info = quantize(model_dir, a.data, a.images)
    print(f"wrote {paths.shown(model_dir)}/openvino-int8.xml: int8, calibrated on "
          f"{info['images']} training images of {info['calibration']}; use --backend "
          f"openvino-int8")


def _demo(a):
    from .demo import run_demo

    console.set_verbose(a.verbose)
    run_demo(a.workdir, model=a.model, epochs=a.epochs, num_workers=a.num_workers,
             tune=not a.no_tune, serve=not a.no_serve)


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="make SIGNS-layout data files")
    dsub = data.add_subparsers(dest="data_command", required=True)
    imp = dsub.add_parser("import", help="image folder (one sub-folder per class) -> .h5 files")
    imp.add_argument("images_dir", type=paths.local)
    imp.add_argument("--out", required=True, type=paths.output)
    imp.add_argument("--classes", default="0,1,2,3,4,5")
    imp.add_argument("--size", type=int, default=64)
    imp.add_argument("--test-fraction", type=float, default=0.1)
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_data_import)
    sam = dsub.add_parser("sample", help="the embedded photos of hands signing 0-9 -> .h5 "
                                         "files (the split builtin:sign-digits uses)")
    sam.add_argument("--out", required=True, type=paths.output)
    sam.add_argument("--classes", default="0,1,2,3,4,5")
    sam.add_argument("--test-fraction", type=float, default=0.1)
    sam.add_argument("--seed", type=int, default=0)
    sam.set_defaults(func=_data_sample)
    syn = dsub.add_parser("synth", help="drawn hands showing 0-5 (for tests and as an example)")
    syn.add_argument("--out", required=True, type=paths.output)
    syn.add_argument("--train", type=int, default=1080)
    syn.add_argument("--test", type=int, default=120)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--folder", action="store_true",
                     help="write --train + --test JPEG files, one sub-folder per class, for "
                          "--data FOLDER (which splits them by path) instead of .h5 files")
    syn.set_defaults(func=_data_synth)


def _add_backend_flag(parser) -> None:
    from .backends import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="inference backend (default auto: OpenVINO at the CPU's own "
                             "precision, bfloat16 where the CPU has it; tf: TensorFlow)")


def build_parser() -> argparse.ArgumentParser:
    p = parser_class()(
        prog="resnet-ray",
        description="Train, tune and serve a Keras ResNet-50 for hand-sign digits on Ray.")
    p.add_argument("--version", action=_Version, help="print the versions of resnet-ray, Ray, "
                   "TensorFlow and the serving backend, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    _add_data_commands(sub)

    tr = sub.add_parser("train", help="data-parallel training on Ray Train")
    train.add_arguments(tr)
    tr.set_defaults(func=train.command)

    tu = sub.add_parser("tune", help="Ray Tune search over training options")
    tune.add_arguments(tu)
    tu.set_defaults(func=tune.command)

    ev = sub.add_parser("evaluate", help="metrics of an exported model on a .h5 file")
    ev.add_argument("model_dir", type=paths.local)
    ev.add_argument("--data", required=True, type=paths.local_or_builtin,
                    help="a train_signs.h5- or test_signs.h5-layout file, or "
                         "builtin:sign-digits[-10] for its held-out test photos")
    _add_backend_flag(ev)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--plots", type=paths.output,
                    help="write confusion.png into this directory")
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="digit per image file")
    pr.add_argument("model_dir", type=paths.local)
    pr.add_argument("images", nargs="+", type=paths.local)
    _add_backend_flag(pr)
    pr.set_defaults(func=_predict)

    se = sub.add_parser("serve", help="serve an exported model over HTTP (Ray Serve)")
    se.add_argument("model_dir", type=paths.local, help="an exported model directory, or a "
                    "repository of numbered versions (REPO/1, REPO/2, ...)")
    se.add_argument("--version", type=int, dest="model_version", metavar="N",
                    help="with a repository: serve version N (default: the newest)")
    se.add_argument("--watch", action="store_true",
                    help="with a repository: roll out each newer version that appears in it, "
                         "as TF Serving's file system polling does")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--replicas", type=int, default=1)
    _add_backend_flag(se)
    se.add_argument("--ingress", default="haproxy", choices=["haproxy", "proxy"],
                    help="who answers HTTP: HAProxy straight to the replicas (default; its "
                         "stats page and metrics on 127.0.0.1 only), or Ray's Python proxy, "
                         "slower (docs/serving.md)")
    se.add_argument("--access-log", action="store_true",
                    help="one log line per request in the replica's log (off: it costs CPU)")
    console.add_verbose_flag(se)
    se.set_defaults(func=_serve)

    dp = sub.add_parser("deploy", help="make a running service serve another version of its "
                                       "repository, in place (rollback: an older one)")
    dp.add_argument("repo", type=paths.local, help="the repository the service serves")
    dp.add_argument("--version", type=int, dest="model_version", metavar="N")
    dp.add_argument("--app", default="digits", help="the Serve application (default digits)")
    dp.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for every replica (exit status 3 after)")
    dp.add_argument("--eval", type=paths.local_or_builtin, metavar="TEST_FILE",
                    help="score the new and the live version on this file first and refuse a "
                         "new one that scores worse")
    dp.add_argument("--force", action="store_true",
                    help="deploy even if the new version scores worse on --eval")
    dp.add_argument("--status", action="store_true",
                    help="print the repository's versions, each replica's and the last "
                         "refusal")
    console.add_verbose_flag(dp)
    dp.set_defaults(func=_deploy)

    qu = sub.add_parser("quantize", help="int8 copy of an exported model for OpenVINO "
                                         "(post-training, calibrated on training images)")
    qu.add_argument("model_dir", type=paths.local)
    qu.add_argument("--data", required=True, type=paths.local,
                    help="a SIGNS directory or its train_signs.h5 (never the test file)")
    qu.add_argument("--images", type=int, default=300, help="calibration images (default 300)")
    qu.set_defaults(func=_quantize)

    de = sub.add_parser("demo", help="embedded photos -> tune -> train -> evaluate -> predict "
                                       "-> serve")
    de.add_argument("--workdir", default="runs/demo", type=paths.output)
    de.add_argument("--model", default="resnet50", choices=["resnet50", "tiny"])
    de.add_argument("--epochs", type=int, default=7)
    de.add_argument("--num-workers", type=int, help="training workers (default: chosen from "
                    "the cluster, as `resnet-ray train` does)")
    de.add_argument("--no-tune", action="store_true", help="skip the Ray Tune search step")
    de.add_argument("--no-serve", action="store_true", help="skip the Ray Serve step")
    console.add_verbose_flag(de)
    de.set_defaults(func=_demo)
    return p


def versions() -> str:
    """One line: this package's version and those of what it runs on (without importing
    them: TensorFlow takes seconds to import)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(dists) -> str:
        for dist in (dists,) if isinstance(dists, str) else dists:
            try:
                return version(dist)
            except PackageNotFoundError:
                pass
        return "not installed"

    return f"resnet-ray {__version__} (" + ", ".join(
        f"{name} {installed(dists)}" for name, dists in VERSIONED) + ")"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
