"""`resnet-ray`: parses arguments and calls the package; a UserError exits 2 without traceback."""

from __future__ import annotations

import argparse
import json
import sys

from .config import DEFAULT_STORAGE, TrainConfig
from .errors import RunFailed, UserError


def _data_import(a):
    from .data import import_images, parse_classes

    train, test = import_images(a.images_dir, a.out, parse_classes(a.classes), a.size,
                                a.test_fraction, a.seed, progress=not a.quiet)
    print(f"wrote {a.out}/train_signs.h5 ({len(train)} images) and {a.out}/test_signs.h5 "
          f"({len(test)} images), classes {train.classes}, {a.size}x{a.size}")


def _data_synth(a):
    from .data import write_signs_dir
    from .synth import synth_data

    if a.train < 1 or a.test < 1:
        raise UserError(f"--train/--test: expected at least 1 image each, got {a.train}/{a.test}")
    train, test = synth_data(a.train, a.test, a.seed)
    write_signs_dir(a.out, train, test)
    print(f"wrote {a.out}/train_signs.h5 ({len(train)} images) and {a.out}/test_signs.h5 "
          f"({len(test)} images), classes {train.classes}, 64x64")


def _train_config(a) -> TrainConfig:
    return TrainConfig(data=a.data, model=a.model, epochs=a.epochs, batch_size=a.batch_size,
                       lr=a.lr, num_workers=a.num_workers, cpus_per_worker=a.cpus_per_worker,
                       use_gpu=a.use_gpu, storage=a.storage, name=a.name, export=a.export,
                       max_failures=a.max_failures, keep_checkpoints=a.keep_checkpoints,
                       seed=a.seed, bn_momentum=a.bn_momentum,
                       label_smoothing=a.label_smoothing, weight_decay=a.weight_decay,
                       augment=a.augment,
                       lr_schedule=a.lr_schedule, warmup_epochs=a.warmup_epochs,
                       val_fraction=a.val_fraction, allreduce_pack_mb=a.allreduce_pack_mb,
                       allreduce_dtype=a.allreduce_dtype, accumulate=a.accumulate,
                       lr_scaling=a.lr_scaling)


def _train(a):
    from .train import run_training

    cfg = _train_config(a)
    result = run_training(cfg)
    m = result.metrics or {}
    print(f"finished: {m.get('epoch')} epochs, val_accuracy {m.get('val_accuracy', 0):.4f}, "
          f"run directory {result.path or cfg.run_dir}")


def _tune(a):
    from .tune import load_spec, run_search

    summary = run_search(load_spec(a.config), a.data, storage=a.storage, name=a.name,
                         export=a.export, max_concurrent=a.max_concurrent,
                         num_samples=a.num_samples, resume=a.resume)
    best = summary.get("best")
    if best is None:
        raise RunFailed(f"no trial of the search reported a result; see {summary['csv']}")
    print(f"{summary['trials']} trials, {summary['epochs_run']} of {summary['epochs_budget']} "
          f"epochs run; best: {best}\nresults: {summary['csv']}")


def _evaluate(a):
    from .evaluate import evaluate, format_report, plot_confusion

    m = evaluate(a.model_dir, a.data)
    if a.plots:
        m["confusion_png"] = str(plot_confusion(m, a.plots))
    print(json.dumps(m) if a.json else format_report(m))


def _predict(a):
    from .predict import predict_files

    for path, p in zip(a.images, predict_files(a.model_dir, a.images)):
        print(f"{path}: {p.describe()}")


def _serve(a):
    from .serve import serve_foreground

    serve_foreground(a.model_dir, host=a.host, port=a.port, replicas=a.replicas)


def _demo(a):
    from .demo import run_demo

    run_demo(a.workdir, model=a.model, epochs=a.epochs, num_workers=a.num_workers,
             tune=not a.no_tune, serve=not a.no_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resnet-ray",
        description="Train, tune and serve a Keras ResNet-50 for hand-sign digits on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make SIGNS-layout data files")
    dsub = data.add_subparsers(dest="data_command", required=True)
    imp = dsub.add_parser("import", help="image folder (one sub-folder per class) -> .h5 files")
    imp.add_argument("images_dir")
    imp.add_argument("--out", required=True)
    imp.add_argument("--classes", default="0,1,2,3,4,5")
    imp.add_argument("--size", type=int, default=64)
    imp.add_argument("--test-fraction", type=float, default=0.1)
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_data_import)
    syn = dsub.add_parser("synth", help="the embedded default: drawn hands showing 0-5")
    syn.add_argument("--out", required=True)
    syn.add_argument("--train", type=int, default=1080)
    syn.add_argument("--test", type=int, default=120)
    syn.add_argument("--seed", type=int, default=0)
    syn.set_defaults(func=_data_synth)

    d = TrainConfig()
    tr = sub.add_parser("train", help="data-parallel training on Ray Train")
    tr.add_argument("--data", required=True, help="directory with train_signs.h5, test_signs.h5")
    tr.add_argument("--model", default=d.model, choices=["resnet50", "tiny"])
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    tr.add_argument("--lr", type=float, default=d.lr)
    tr.add_argument("--num-workers", type=int, default=d.num_workers)
    tr.add_argument("--cpus-per-worker", type=int, default=d.cpus_per_worker)
    tr.add_argument("--use-gpu", action="store_true")
    tr.add_argument("--storage", default=DEFAULT_STORAGE, help="local path or URI (s3://...)")
    tr.add_argument("--name", default=d.name)
    tr.add_argument("--export", help="write the best checkpoint as a model directory here")
    tr.add_argument("--max-failures", type=int, default=d.max_failures)
    tr.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    tr.add_argument("--seed", type=int, default=d.seed, help="weights, data order and the "
                    "validation split")
    tr.add_argument("--val-fraction", type=float, default=d.val_fraction,
                    help="share of each class of train_signs.h5 kept out to pick the best "
                         "checkpoint; test_signs.h5 is only scored at export. 0 validates on "
                         "test_signs.h5 (the seed recipe's way)")
    recipe = tr.add_argument_group("training recipe")
    recipe.add_argument("--augment", type=float, default=d.augment,
                        help="augmentation strength: 0 none, 1 = 10%% shift/zoom, 10 degree "
                             "rotation, 20%% brightness/contrast")
    recipe.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"])
    recipe.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                        help="linear warm-up from lr/10")
    recipe.add_argument("--bn-momentum", type=float, default=d.bn_momentum)
    recipe.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    recipe.add_argument("--weight-decay", type=float, default=d.weight_decay,
                        help="AdamW's decoupled weight decay on conv and dense kernels "
                             "(0: Adam)")
    comm = tr.add_argument_group("data-parallel communication")
    comm.add_argument("--allreduce-pack-mb", type=float, default=d.allreduce_pack_mb,
                      help="all-reduce gradients in packs of this many MiB, overlapping the "
                           "backward pass (0: one pack at the end)")
    comm.add_argument("--allreduce-dtype", default=d.allreduce_dtype,
                      choices=["float32", "float16", "bfloat16"],
                      help="dtype the gradients travel in; weights stay float32")
    comm.add_argument("--accumulate", type=int, default=d.accumulate,
                      help="micro-batches of --batch-size per all-reduce and update (the "
                           "update then covers batch-size x accumulate images)")
    comm.add_argument("--lr-scaling", default=d.lr_scaling, choices=["linear", "sqrt", "none"],
                      help="how --lr grows with the update's batch when accumulating")
    tr.set_defaults(func=_train)

    tu = sub.add_parser("tune", help="Ray Tune search over training options")
    tu.add_argument("--config", required=True, help="search-space YAML (tune_configs/*.yaml)")
    tu.add_argument("--data", required=True)
    tu.add_argument("--storage", default=DEFAULT_STORAGE)
    tu.add_argument("--name", default="tune")
    tu.add_argument("--export", help="write the best trial's best checkpoint here")
    tu.add_argument("--max-concurrent", type=int)
    tu.add_argument("--num-samples", type=int)
    tu.add_argument("--resume", action="store_true", help="continue an interrupted search")
    tu.set_defaults(func=_tune)

    ev = sub.add_parser("evaluate", help="metrics of an exported model on a .h5 file")
    ev.add_argument("model_dir")
    ev.add_argument("--data", required=True, help="a train_signs.h5- or test_signs.h5-layout file")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--plots", help="write confusion.png into this directory")
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="digit per image file")
    pr.add_argument("model_dir")
    pr.add_argument("images", nargs="+")
    pr.set_defaults(func=_predict)

    se = sub.add_parser("serve", help="serve an exported model over HTTP (Ray Serve)")
    se.add_argument("model_dir")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--replicas", type=int, default=1)
    se.set_defaults(func=_serve)

    de = sub.add_parser("demo", help="synth -> train -> tune -> evaluate -> predict -> serve")
    de.add_argument("--workdir", default="runs/demo")
    de.add_argument("--model", default="tiny", choices=["resnet50", "tiny"])
    de.add_argument("--epochs", type=int, default=8)
    de.add_argument("--num-workers", type=int, default=2)
    de.add_argument("--no-tune", action="store_true", help="skip the Ray Tune search step")
    de.add_argument("--no-serve", action="store_true", help="skip the Ray Serve step")
    de.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        how = {"train": "run the same command again to resume",
               "tune": "run the same command with --resume to continue the search",
               }.get(args.command)
        print(f"interrupted; checkpoints written so far are kept: {how}" if how
              else "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
