"""python -m bench PART [PART'S FLAGS]: the project's benchmarks (`python -m bench PART -h`).

  train     Ray Train against plain Keras fit           scaling   data-parallel steps, model
  serve     serving speed, in process and over HTTP     soak      serving under sustained load
  accuracy  time to accuracy of the training command    cv        grouped cross-validation
  ingest    a folder against .h5, a revision, memory    tune      what ASHA saves
  check     every goal against this machine             report    the docs' tables from results

Each part writes bench/results/<part>-<date>-<hardware profile>.json and a Markdown summary
beside it (--out names the file); --quick runs the tiny model: the harness, not a measure.
"""

import importlib
import sys

PARTS = {"train": "train_overhead", "scaling": "scaling", "serve": "serve_load",
         "soak": "serve_load.soak_main", "accuracy": "time_to_accuracy", "cv": "cv",
         "ingest": "ingest", "tune": "tune_asha", "check": "check", "report": "report"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in PARTS:
        print(__doc__, file=sys.stderr)
        return 2
    module, _, function = PARTS[argv[0]].partition(".")
    result = getattr(importlib.import_module(f"bench.{module}"), function or "main")(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
