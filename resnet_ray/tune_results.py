"""A search's results: the trials table (printed and CSV), its plots, summary.json, and the
best trial's best checkpoint exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tune_spec import TuneSpec

RESULTS_CSV = "trials.csv"


def summarize(results, spec: TuneSpec, plan, experiment: Path,
              export: str | None, next_version: bool = False) -> dict[str, Any]:
    """Trials table (printed and CSV), plots, and the best trial's best checkpoint exported
    (with next_version, as the repository's next version) and scored once on the held-out
    test images."""
    import pandas as pd

    from .checkpoints import best_checkpoint
    from .export import export_checkpoint, exported_line, format_test_score

    base = plan.config

    rows, curves = [], {}
    searched = list(spec.search_space)
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        row = {"trial": trial_id, **{k: result.config.get(k) for k in searched}}
        if history is not None and len(history) and spec.metric in history:
            epochs = int(history["epoch"].max())
            best = history[spec.metric].max() if spec.mode == "max" else history[spec.metric].min()
            curves[trial_id] = (history["epoch"].tolist(), history[spec.metric].tolist(),
                                result.config)
        else:
            epochs, best = 0, float("nan")
        stop = "error" if result.error else (
            "completed" if epochs >= base.epochs else "stopped early (ASHA)")
        row.update({"epochs": epochs, f"best_{spec.metric}": best, "stop": stop,
                    "train_dir": str(Path(base.storage) / f"train-{trial_id}")})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(f"best_{spec.metric}", ascending=spec.mode == "min",
                                           na_position="last")
    table.to_csv(experiment / RESULTS_CSV, index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.drop(columns=["train_dir"]).to_string(index=False), flush=True)
    plots = plot_results(table, curves, spec, experiment)

    summary: dict[str, Any] = {"trials": len(table), "csv": str(experiment / RESULTS_CSV),
                               "plots": [str(p) for p in plots],
                               "epochs_run": int(table["epochs"].sum()),
                               "epochs_budget": len(table) * base.epochs}
    good = table.dropna(subset=[f"best_{spec.metric}"])
    if len(good):
        top = good.iloc[0]
        summary["best"] = {k: (v.item() if hasattr(v, "item") else v)
                           for k, v in top.to_dict().items()}
        ckpt = best_checkpoint(top["train_dir"], plan.score)
        if export and ckpt is not None:
            meta = export_checkpoint(ckpt, export, plan, extra={
                "tune": {"experiment": str(experiment), "trial": top["trial"],
                         "search_space": spec.search_space, "source": spec.source,
                         "params": {k: summary["best"][k] for k in searched}}},
                next_version=next_version)
            summary["exported"] = meta["model_dir"]
            summary["model_version"] = meta["model_version"]
            print(exported_line(f"trial {top['trial']} ({Path(ckpt.path).name})", meta),
                  flush=True)
            if "test" in meta:
                summary["test"] = meta["test"]
                print(format_test_score(meta), flush=True)
    (experiment / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def plot_results(table, curves, spec: TuneSpec, experiment: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metric = f"best_{spec.metric}"
    if "lr" in table and table[metric].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        colour_by = "batch_size" if "batch_size" in table else None
        groups = table.groupby(colour_by) if colour_by else [("all", table)]
        for key, group in groups:
            ax.scatter(group["lr"], group[metric], label=f"{colour_by} {key}" if colour_by else None)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(metric)
        if colour_by:
            ax.legend()
        ax.set_title("best validation accuracy per trial")
        fig.tight_layout()
        paths.append(experiment / "lr_vs_accuracy.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for trial, (epochs, values, config) in curves.items():
            label = ", ".join(f"{k}={config.get(k):.3g}" if isinstance(config.get(k), float)
                              else f"{k}={config.get(k)}" for k in spec.search_space)
            ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(spec.metric)
        ax.set_title("learning curves")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(experiment / "learning_curves.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
