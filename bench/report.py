"""The docs' tables from bench/results/*.json, so that every published number has one source:
rewrites the lines between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in README.md and
docs/*.md (--check: writes nothing, exits 1 if one differs). A table takes, per hardware
profile, the newest run that measured what it shows, and names each run's machine, date and
command under it; the measures and goals are bench/targets.yaml's.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import yaml

from .common import PROFILES, RESULTS, ROOT, profile, table

MEASURES = yaml.safe_load(Path(__file__).with_name("targets.yaml").read_text())["measures"]
OLD_PARTS = {"time_to_accuracy": "accuracy", "train_overhead": "train"}
TITLES = {"avx2": "2-core AVX2", "avx512-bf16": "2-core AVX-512 with bfloat16",
          "amx": "2-core AMX", "gpu": "GPU"}
BLOCK = re.compile(r"(<!-- bench:([\w-]+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def load(directory: Path = RESULTS, quick: bool = False) -> list[dict]:
    """Every stored result that names its machine, with _file, _part, _profile and _command
    added; probes (setups the product did not keep), and unless `quick` quick runs, left out."""
    out = []
    for path in sorted(directory.glob("*.json")):
        r = json.loads(path.read_text())
        command = r.get("command", "")
        if command.startswith("resnet-ray train"):  # older accuracy runs kept their own
            r["train_command"], command = command, "python -m bench accuracy --data DIR"
        if not r.get("machine") or r.get("probe") or r.get("quick", False) > quick \
                or "part" not in r:
            continue
        out.append({**r, "_file": path.name, "_part": OLD_PARTS.get(r["part"], r["part"]),
                    "_profile": profile(r["machine"]), "_command": command})
    return out


def newest(results: list[dict], part: str, where=lambda r: True) -> dict | None:
    found = [r for r in results if r["_part"] == part and where(r)]
    return max(found, key=lambda r: (r["date"], r.get("finished", 0), r["_file"])) \
        if found else None


def train_flags(command: str) -> list[str]:
    """The flags of a `resnet-ray train` command beyond where its data and runs go, and the
    defaults it would take anyway (--use-gpu is the default command on a GPU)."""
    words, flags = shlex.split(command)[2:], []
    plain = {"--model": "resnet50", "--epochs": "20", "--use-gpu": None}
    while words:
        key = words.pop(0)
        value = words.pop(0) if words and not words[0].startswith("--") else None
        if key not in ("--data", "--storage", "--name", "--export") and \
                (key not in plain or plain[key] != value):
            flags += [key] + ([value] if value is not None else [])
    return flags


def _default_run(r: dict) -> bool:
    classes = r.get("classes") or r.get("config", {}).get("classes")
    return not train_flags(r.get("train_command", "")) and classes == list(range(6))


def _ray_vs_keras(cpus_rule):
    def value(rs):
        r = newest(rs, "train", lambda r: cpus_rule(r) and {s["setup"] for s in r["summary"]}
                   >= {"keras", f"ray 1x{r['cpus']}"})
        if r:
            return next(s["vs_keras"] for s in r["summary"] if s["setup"] ==
                        f"ray 1x{r['cpus']}"), [r]
    return value


def _bf16_vs_float32(rs):
    pairs = [(b, f) for b in rs if b["_part"] == "accuracy" and _default_run(b)
             and b.get("precision") == "mixed_bfloat16"
             for f in rs if f["_part"] == "accuracy" and f["date"] == b["date"]
             and train_flags(f.get("train_command", "")) == ["--precision", "float32"]]
    if pairs:
        b, f = max(pairs, key=lambda p: p[0]["date"])
        return f["median_epoch_s"] / b["median_epoch_s"], [b, f]


def _summary(part: str, key: str):
    def value(rs):
        r = newest(rs, part, lambda r: key in r.get("summary", {}))
        return (r["summary"][key], [r]) if r else None
    return value


def _section(part: str, section: str, fn):
    def value(rs):
        r = newest(rs, part, lambda r: section in r)
        return (fn(r[section]), [r]) if r else None
    return value


def _haproxy_vs_proxy(rs):
    def proxy(r):  # the proxy's row, under its older name too
        return r["summary"].get("proxy_ingress_http_c32_vs_tf_in_process") or \
            r["summary"].get("default_ingress_http_c32_vs_tf_in_process")
    r = newest(rs, "serve", lambda r: proxy(r) is not None)
    return (r["summary"]["openvino_http_c32_vs_tf_in_process"] / proxy(r), [r]) if r else None


def _time_to_99(rs):
    r = newest(rs, "accuracy", _default_run)
    return (r["reached"]["0.99"]["wall_s"], [r]) if r and r["reached"].get("0.99") else None


def _cv(rs):
    r = newest(rs, "cv", lambda r: r["rows"][0]["photos"] == 1050 and any(
        not row["flags"] for row in r["rows"]))
    return (next(x["error_rate"] for x in r["rows"] if not x["flags"]), [r]) if r else None


VALUES = {
    "time_to_99": _time_to_99, "cv_error_rate": _cv,
    "ray_vs_keras": _ray_vs_keras(lambda r: f"{r.get('cpus')} cores" in r["machine"]),
    "ray_vs_keras_core_to_spare": _ray_vs_keras(lambda r: r.get("cpus") == 1),
    "bf16_vs_float32": _bf16_vs_float32,
    "folder_vs_h5": _section("ingest", "speed", lambda s: s["ratio"]),
    "h5_vs_baseline": _section("ingest", "baseline", lambda s: s["ratio"]),
    "folder_memory_growth_mb": _section("ingest", "memory", lambda m: max(
        m["growth_peak_rss_mb"].values()) if "growth_peak_rss_mb" in m else
        m["big"]["peak_rss_mb"] - m["small"]["peak_rss_mb"]),
    **{k: _summary("serve", k) for k in (
        "tf_http_c32_vs_in_process", "tf_batching_on_vs_off_c32", "tf_json32_vs_in_process",
        "fastest_backend_vs_tf_batch32", "openvino_http_c32_vs_tf_in_process",
        "openvino_p50_ms_c1", "openvino_http_c32_vs_own_in_process",
        "openvino_v2_binary32_vs_own_in_process")},
    "haproxy_vs_proxy_c32": _haproxy_vs_proxy,
    "soak_errors": _summary("soak", "errors_other_than_503"),
    "soak_rss_growth_mb": _summary("soak", "rss_growth_mb"),
    **{k: _summary("rollout", k) for k in ("rollout_not_200", "rollout_max_ms",
       "rollout_p99_vs_steady", "deploy_new_version_s", "deploy_kept_version_s")},
    "asha_epochs_share": _summary("tune", "epochs_share"),
    "asha_best_gap": _summary("tune", "best_gap_points"),
    "scaling_model_error": lambda rs: (lambda r: r and (
        _scaling(r)["scaling_model"]["max_abs_error"], [r]))(newest(rs, "scaling")),
}


def _scaling(r: dict) -> dict:
    from .scaling import analyse

    return analyse([dict(x) for x in r["measured"]], r["cores"], r["model"],
                   r["gradient_mb"] * 2 ** 20)


def goal(m: dict, prof: str):
    """(the bound, "at_least" or "at_most") of a measure on a profile, or None."""
    kind = next((k for k in ("at_least", "at_most") if k in m), None)
    bound = kind and (m[kind].get(prof) if isinstance(m[kind], dict) else m[kind])
    return None if bound is None else (bound, kind)


def fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.2g}%" if value < 0.1 else f"{100 * value:.0f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return (f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}").strip()


def goal_text(m: dict) -> str:
    kind = next((k for k in ("at_least", "at_most") if k in m), None)
    if kind is None:
        return "-"
    sign, bound = (">=" if kind == "at_least" else "<="), m[kind]
    return ", ".join(f"{sign} {fmt(v, m['unit'])}" + (f" ({k})" if k else "") for k, v in
                     (bound.items() if isinstance(bound, dict) else [(None, bound)]))


class Runs(list):
    """The numbered runs a table cites, listed under it with machine, date and command."""

    def ref(self, results: list[dict]) -> str:
        self.extend(r for r in results if r not in self)
        return "".join(f"[{self.index(r) + 1}]" for r in results)

    def text(self) -> str:
        return "\n".join(f"- [{i}] {short(r['machine'])}, {r['date']}: `{r['_command']}`" + (
            f", which runs `{' '.join(['resnet-ray train --data DIR', *train_flags(c)])}`"
            if (c := r.get("train_command")) else "") + f" (`bench/results/{r['_file']}`)"
            for i, r in enumerate(self, 1))


def short(machine_name: str) -> str:
    """A machine's CPU (or GPU), cores and the one flag its profile stands for."""
    name, _, flags = machine_name.rpartition(", ")
    kept = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags.split()][:1]
    return ", ".join([name, *kept])


def _by_profile(results: list[dict]) -> dict:
    return {p: [r for r in results if r["_profile"] == p] for p in PROFILES}


def targets_table(results: list[dict], page: str) -> str:
    runs, split = Runs(), _by_profile(results)
    ms = {k: m for k, m in MEASURES.items() if m.get("page") == page}
    found = {(k, p): VALUES[k](split[p]) for k in ms for p in PROFILES}
    shown = [p for p in PROFILES if any(found[k, p] for k in ms)]
    rows = [[m["what"], goal_text(m), *(f"{fmt(found[k, p][0], m['unit'])} "
                                        f"{runs.ref(found[k, p][1])}" if found[k, p] else "-"
                                        for p in shown)] for k, m in ms.items()]
    return table(["measure", "goal", *(TITLES[p] for p in shown)], rows) + "\n\n" + runs.text()


def readme_table(results: list[dict]) -> str:
    runs, rows, split = Runs(), [], _by_profile(results)
    for p in PROFILES:
        r = newest(split[p], "accuracy", _default_run)
        hit = r and r["reached"].get("0.99")
        rows.append([TITLES[p], "pending: not measured yet", "-", "-", "-"] if r is None else [
            TITLES[p], f"{hit['wall_s']:.0f} s (epoch {hit['epoch']})" if hit else
            "not reached", f"{r['command_s']:.0f} s",
            f"{r['test']['right']}/{r['test']['images']}", runs.ref([r])])
    return table(["hardware", "99% validation after", "whole command", "test photos", "run"],
                 rows) + "\n\n" + runs.text()


def cv_table(results: list[dict]) -> str:
    runs, rows = Runs(), []
    for r in sorted((r for r in results if r["_part"] == "cv"),
                    key=lambda r: (r["rows"][0]["photos"], r["date"], r["_file"])):
        for row in r["rows"]:
            rows.append(["0-5" if row["photos"] == 1050 else "0-9",
                         f"`{row['flags'] or '(the defaults)'}`",
                         f"{row['errors']}/{row['photos']:,} (" + ", ".join(
                             str(f["errors"]) for f in row["folds"]) + ")",
                         f"{row['error_rate']:.2%}", f"{row['minutes']:.0f}",
                         TITLES[r["_profile"]], runs.ref([r])])
    return table(["photos", "training flags", "errors (per fold)", "error rate", "minutes",
                  "hardware", "run"], rows) + "\n\n" + runs.text()


def scaling_table(results: list[dict]) -> str:
    r, runs = newest(results, "scaling"), Runs()
    report, cells = _scaling(r), {}
    for p in report["predictions"]:
        cells.setdefault((p["setting"], p["link_gbit"]), []).append(f"{p['efficiency']:.0%}")
    workers, m = sorted({p["workers"] for p in report["predictions"]}), report["scaling_model"]
    return (table(["gradients", "link", *(f"N={n}" for n in workers)],
                  [[s, f"{link} Gbit/s", *c] for (s, link), c in cells.items()]) +
            f"\n\nFrom one core's measured speed and the model calibrated on run "
            f"{runs.ref([r])}: loopback {m['loopback_gbit_per_s']:.2f} Gbit/s and "
            f"{m['overhead_s_per_step']:.2f} s per update; it predicted each measured "
            f"multi-worker setup within {m['max_abs_error']:.0%}.\n\n" + runs.text())


BLOCKS = {"results": readme_table, "cv": cv_table, "scaling": scaling_table,
          **{page: (lambda rs, page=page: targets_table(rs, page))
             for page in ("performance", "serving", "tuning")}}


def render(text: str, results: list[dict]) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}{BLOCKS[m.group(2)](results)}\n{m.group(4)}",
                     text)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report", description=__doc__)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table "
                   "differs from what the results give")
    a = p.parse_args(argv)
    results, stale = load(), []
    for page in pages():
        old, new = page.read_text(), render(page.read_text(), results)
        if new != old:
            stale.append(page.relative_to(ROOT))
            if not a.check:
                page.write_text(new)
    verb = "differ from bench/results" if a.check else "rewritten"
    print(f"{len(stale)} page(s) {verb}" + "".join(f"\n  {s}" for s in stale))
    return 1 if a.check and stale else 0
