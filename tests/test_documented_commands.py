"""Every command a page tells a user to type (`$ ` lines of its ```console blocks) runs here as
written, page by page in one working directory laid out as a clone, once in a pseudo-terminal
of 120 x 50 and once into a pipe: it exits 0, prints no traceback, and prints the lines the
page shows after it, in that order (`...` and numbers stand for any value).

COMMANDS maps every such command to what runs: the page's data and model swapped for small
synthetic data and the tiny model, or a reason it cannot run on a CI machine. A command added
to a page without an entry fails the test."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import fcntl
import pytest

from conftest import ROOT, internal_lines, write_easy_signs

PAGES = ["README.md", "docs/tuning.md", "docs/training.md", "docs/serving.md",
         "docs/cluster.md", "docs/performance.md", "docs/scaling.md", "docs/testing.md"]
COLUMNS, ROWS = 120, 50


@dataclasses.dataclass(frozen=True)
class Run:
    """How a documented command runs here."""
    # (as on the page, what runs): replaced in the command and in the lines shown after it
    sub: tuple[tuple[str, str], ...] = ()
    # options added at the end: the tiny model, fewer epochs or trials
    append: tuple[str, ...] = ()
    # a server: it runs on beside the page's next commands once it has printed a line with
    # this text, and is stopped with Ctrl-C after them
    until: str | None = None
    # a URL that must answer before the next command (a person types more slowly)
    then: str | None = None
    # a training run's epochs: each must leave exactly one line, in a terminal too
    epochs: int = 0


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    reason: str


MODEL = (("resnet50", "tiny"),)
COMMANDS = {
    "README.md": {
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && source .venv/bin/activate":
            Elsewhere(".ci/run makes the environment the same way before any test runs"),
        # Two epochs: each leaves its line on screen. A tiny model may not find a digit.
        "resnet-ray demo": Run(sub=(*MODEL, ("0->0, 1->1, 2->2, 3->3, 4->4, 5->5 (6/6 correct)",
                                             "...")),
                               append=("--model tiny --epochs 2",), epochs=2),
    },
    "docs/tuning.md": {
        "resnet-ray tune --config tune_configs/smoke.yaml --data data/synth --export "
        "models/tuned --next-version": Run(append=("--num-samples 2",)),
    },
    "docs/training.md": {
        "ray start --head --node-ip-address=127.0.0.1 --port=6390 --dashboard-port=8266 "
        "--num-cpus=2": Run(then="http://127.0.0.1:8266"),
        "export RAY_AUTH_MODE=token": Run(),
        "ray job submit --address http://127.0.0.1:8266 --runtime-env cluster/runtime_env.yaml "
        "-- python -m resnet_ray.train --data $PWD/data/synth --model tiny --epochs 2 "
        "--storage $PWD/runs --name job --export $PWD/models/job": Run(epochs=2),
        "ray stop": Run(),
        "resnet-ray train --data ../shared/datasets/sign-language-digits --classes "
        "0,1,2,3,4,5 --storage runs --export models/r50":
            Run(sub=(("../shared/datasets/sign-language-digits", "data/folder"),),
                append=("--model tiny --epochs 1",), epochs=1),
        "resnet-ray train --data s3://my-bucket/hands --export models/r50":
            Elsewhere("needs a bucket: tests/test_folders.py trains from one on an S3 server"),
        "resnet-ray evaluate models/r50 --data data/photos/test_signs.h5": Run(),
        # A tiny model trained for an epoch is rarely sure of a digit.
        "resnet-ray predict models/r50 photo1.jpg photo2.png":
            Run(sub=(("photo1.jpg: 3 (...)", "photo1.jpg: ..."),)),
    },
    "docs/serving.md": {
        "resnet-ray serve models/tuned --port 8000": Run(until="serving "),
        "curl -s -F file=@photo.jpg http://127.0.0.1:8000/predict":
            Run(sub=(('"digit":2,"found":true', '"digit":...,"found":...'),)),
        "resnet-ray quantize models/tuned --data data/photos": Run(),
        "resnet-ray evaluate models/tuned --data data/photos/test_signs.h5 --backend "
        "openvino-int8": Run(),
        "resnet-ray deploy models/tuned --status": Run(),
        # Pictures the tiny model learns in four epochs, so that the new version scores at
        # least as well as the live one and goes live.
        "resnet-ray train --data data/photos --name v2 --export models/tuned --next-version "
        "--deploy":
            Run(sub=(("data/photos", "data/easy"),),
                append=("--model tiny --epochs 4 --bn-momentum 0.5",), epochs=4),
        "resnet-ray deploy models/tuned --version 1": Run(),
    },
    "docs/cluster.md": {
        **dict.fromkeys([
            "python cluster/local_cluster.py start --workers 3 --cpus-per-worker 1 "
            "--head-cpus 0",
            "export RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8278",
            "ray job submit --runtime-env cluster/runtime_env.yaml -- python -m "
            "resnet_ray.train --data $PWD/data/synth --model tiny --epochs 6 --storage "
            "$PWD/runs --name multi",
            "python cluster/local_cluster.py nodes",
            "python cluster/local_cluster.py remove-node 2",
            "python cluster/local_cluster.py stop"],
            Elsewhere("tests/test_multinode.py runs this cluster, its job and the lost node")),
        **dict.fromkeys([
            "docker build -f cluster/Dockerfile -t resnet-ray:0.1.0 .",
            "docker build -f cluster/Dockerfile --build-arg TF_VARIANT=gpu -t "
            "resnet-ray:0.1.0-gpu ."], Elsewhere("needs Docker; tests/test_cluster_configs.py "
                                                  "checks the Dockerfile")),
        **dict.fromkeys([
            "ray get-auth-token --generate", "ray up cluster/aws.yaml",
            "ray dashboard cluster/aws.yaml &",
            "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 "
            "--runtime-env cluster/runtime_env.yaml -- python -m resnet_ray.train --data "
            "/mnt/shared/digits --num-workers 4 --cpus-per-worker 16 --storage "
            "s3://my-bucket/runs --name r50 --export /mnt/shared/models/r50",
            "ray down cluster/aws.yaml"],
            Elsewhere("needs an AWS account; tests/test_cluster_configs.py checks aws.yaml")),
        **dict.fromkeys([
            "kubectl apply -f cluster/shared-storage.yaml",
            "kubectl apply -f cluster/rayjob-train.yaml",
            "kubectl apply -f cluster/rayjob-tune.yaml",
            "kubectl apply -f cluster/rayservice.yaml",
            "kubectl port-forward svc/resnet-ray-serve-svc 8000:8000",
            "curl -s -F file=@photo.jpg http://127.0.0.1:8000/predict"],
            Elsewhere("needs Kubernetes; tests/test_cluster_configs.py validates the "
                      "manifests against KubeRay's CRDs")),
    },
    **{page: {cmd: Elsewhere("a benchmark of minutes to an hour: `python -m bench check` runs "
                             "the parts, tests/test_bench.py their harness")
              for cmd in cmds} for page, cmds in {
        "docs/performance.md": [
            'python -m bench train --rounds 5 --images 1024',
            'python -m bench train --cpus 1 --setups keras,"ray 1x1" --rounds 5',
            "python -m bench accuracy --data DIR",
            "python -m bench accuracy --data DIR -- --precision float32",
            "python -m bench ingest --photos DIR --rounds 3",
            "python -m bench ingest --baseline REV",
            "python -m bench ingest --small DIR1K --big DIR100K"],
        "docs/scaling.md": [
            "python -m bench scaling", "python -m bench scaling --workers 2 --batch 16",
            "python -m bench train --allreduce-dtype float16 --accumulate 4 --lr-scaling "
            "sqrt --rounds 5"]}.items()},
    "docs/testing.md": {
        "python -m pytest tests/reliability --long -s":
            Elsewhere("the long tier itself, half an hour"),
    },
}


@dataclasses.dataclass
class Command:
    page: str
    text: str           # as on the page, continuation lines joined, without its comment
    shown: list[str]    # the output lines the page shows after it


def documented_commands(page: str) -> list[Command]:
    commands, block = [], None
    lines = (ROOT / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if block is None:
            block = "console" if line.strip() == "```console" else (
                "other" if line.startswith("```") else None)
        elif line.startswith("```"):
            block = None
        elif block == "console" and line.startswith("$ "):
            text = line[2:]
            while text.rstrip().endswith("\\"):
                i += 1
                text = text.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            text = re.sub(r"\s+#\s.*$", "", text).strip()
            commands.append(Command(page, text, []))
        elif block == "console" and commands:
            commands[-1].shown.append(line)
        i += 1
    return commands


def shown_pattern(line: str, sub) -> re.Pattern:
    """A shown line as a pattern: `...` any text, a number any number."""
    for old, new in sub:
        line = line.replace(old, new)
    parts = re.split(r"(\.\.\.|\d+(?:\.\d+)?)", line.strip())
    return re.compile("".join(".*?" if p == "..." else r"[-+\d.e]+" if re.fullmatch(
        r"\d+(?:\.\d+)?", p) else re.escape(p) for p in parts))


def missing_lines(output: list[str], shown: list[str], sub) -> list[str]:
    """The shown lines not found in the output in the page's order."""
    patterns = [(s, shown_pattern(s, sub)) for s in shown if s.strip() not in ("", "...")]
    missing, at = [], 0
    for text, pattern in patterns:
        for j in range(at, len(output)):
            if pattern.search(output[j]):
                at = j + 1
                break
        else:
            missing.append(text)
    return missing


def test_every_command_on_a_page_has_an_entry():
    documented = {(c.page, c.text) for page in PAGES for c in documented_commands(page)}
    mapped = {(page, cmd) for page, cmds in COMMANDS.items() for cmd in cmds}
    assert documented - mapped == set(), "commands on a page without an entry in COMMANDS"
    assert mapped - documented == set(), "entries for commands no page shows any more"
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]
             if documented_commands(str(p.relative_to(ROOT)))}
    assert pages <= set(PAGES)


# ---- running them ----------------------------------------------------------------------

def ctrl_c_default() -> None:
    """Ctrl-C (SIGINT) stops a command as at a person's terminal, even where this test runs
    as a background job, whose children inherit SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A command in a pseudo-terminal of COLUMNS x ROWS; `lines()` is the screen as a person
    sees it at the end, the lines scrolled off its top included."""

    def __init__(self, script: str, cwd: Path, env: dict):
        import pyte

        self.screen = pyte.HistoryScreen(COLUMNS, ROWS, history=100_000, ratio=0.5)
        self.stream = pyte.ByteStream(self.screen)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        # A person's terminal stays open after a command: its shell's end hangs nothing up.
        self.proc = subprocess.Popen(["bash", "-c", f"trap '' HUP; {script}"], stdin=slave,
                                     stdout=slave, preexec_fn=ctrl_c_default,
                                     stderr=slave, cwd=cwd, env=env, start_new_session=True)
        os.close(slave)
        self.master, self.raw = master, b""

    def pump(self, timeout: float) -> int | None:
        """Bytes read within `timeout`; None once every process has let go of the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return 0
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO
            data = b""
        if not data:
            return None
        self.raw += data
        self.stream.feed(data)
        return len(data)

    def lines(self) -> list[str]:
        """The screen's rows; a row written up to its last column or the one before (the
        wrap may have taken a space) continues on the next: the terminal wrapped a longer
        line there."""
        rows = ["".join(line[x].data for x in range(COLUMNS)) for line in
                self.screen.history.top] + list(self.screen.display)
        lines, wrapped = [], False
        for row in rows:
            if wrapped:
                lines[-1] += row
            else:
                lines.append(row)
            wrapped = len(row.rstrip()) >= COLUMNS - 1
        return [line.rstrip() for line in lines]

    def text(self) -> str:
        return self.raw.decode(errors="replace")


class Piped:
    """A command with its output, stdout and stderr together, into a pipe."""

    def __init__(self, script: str, cwd: Path, env: dict):
        self.proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True, preexec_fn=ctrl_c_default)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.raw = b""

    def pump(self, timeout: float) -> int | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return 0
        data = self.proc.stdout.read() or b""
        self.raw += data
        return len(data) or None

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def text(self) -> str:
        return self.raw.decode(errors="replace")


def wait_for(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s"
            time.sleep(0.5)


def finish(run, timeout: float) -> int:
    """The command's exit status once it has exited and its output is read (daemons it
    started, such as `ray start`'s, may hold the terminal or pipe open after it)."""
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None and run.pump(1.0) is not None:
        if time.monotonic() > deadline:
            os.killpg(run.proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout:.0f} s:\n{run.text()[-3000:]}")
    status = run.proc.wait(timeout=60)
    while run.pump(0.2):
        pass
    return status


def make_workdir(work: Path) -> None:
    """A clone's layout with the data the pages name, small: data/synth and data/photos
    (SIGNS files), data/folder (photos in class folders), photo.jpg, photo1.jpg, photo2.png;
    and data/easy (SIGNS files a tiny model learns in four epochs)."""
    from PIL import Image

    from resnet_ray.data import write_signs_dir
    from resnet_ray.synth import synth_data, write_synth_folder

    for part in ("resnet_ray", "cluster", "tune_configs"):
        shutil.copytree(ROOT / part, work / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    train, test = synth_data(96, 24, seed=1)
    write_signs_dir(work / "data" / "synth", train, test)
    write_signs_dir(work / "data" / "photos", train, test)
    write_synth_folder(work / "data" / "folder", 120, seed=2)
    write_easy_signs(work / "data" / "easy")
    for name, image in (("photo.jpg", test.x[0]), ("photo1.jpg", test.x[1]),
                        ("photo2.png", test.x[2])):
        Image.fromarray(image).save(work / name)


def run_pages(work: Path, mode: str) -> list[str]:
    """Runs every page's commands in `mode` ("terminal" or "pipe"); returns what failed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "COLUMNS", "LINES", "RAY_AUTH_MODE")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", TERM="xterm")
    kind = Terminal if mode == "terminal" else Piped
    failures, exports = [], []
    for page in PAGES:
        servers = []
        for cmd in documented_commands(page):
            todo = COMMANDS[page][cmd.text]
            if isinstance(todo, Elsewhere):
                continue
            text = cmd.text
            for old, new in todo.sub:
                text = text.replace(old, new)
            text = " ".join([text, *todo.append])
            if text.startswith("export "):
                exports.append(text)
                continue
            run = kind("; ".join([*exports, text]), work, env)
            where = f"{page}: $ {text} ({mode})"
            if todo.until:
                deadline = time.monotonic() + 300
                while todo.until not in run.text():
                    assert run.pump(1.0) is not None and time.monotonic() < deadline, \
                        f"{where}: never printed {todo.until!r}:\n{run.text()[-3000:]}"
                servers.append((run, cmd, todo, where))
                continue
            started = time.monotonic()
            failures += check(run, finish(run, 600), cmd, todo, where)
            print(f"{time.monotonic() - started:5.1f} s  {where}")
            if todo.then:
                wait_for(todo.then)
        for run, cmd, todo, where in servers:
            os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C
            failures += check(run, finish(run, 120), cmd, todo, where)
    return failures


def check(run, status: int, cmd: Command, todo: Run, where: str) -> list[str]:
    lines, problems = run.lines(), []
    if status != 0:
        problems.append(f"exit status {status}")
    if "Traceback (most recent call last)" in run.text():
        problems.append("a traceback")
    if todo.epochs:
        epoch_lines = [line for line in lines if re.match(rf"epoch \d+/{todo.epochs} ", line)]
        if len(epoch_lines) != todo.epochs:
            problems.append(f"{len(epoch_lines)} epoch lines for {todo.epochs} epochs")
    if missing := missing_lines(lines, cmd.shown, todo.sub):
        problems.append(f"shown lines missing or out of order: {missing}")
    internal = internal_lines("\n".join(lines)) if cmd.text.startswith("resnet-ray ") else []
    if internal:
        problems.append(f"Ray's or TensorFlow's own lines: {internal[:3]}")
    if problems:
        return [f"{where}: {'; '.join(problems)}\n" + "\n".join(lines[-40:])]
    return []


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", ["terminal", "pipe"])
def test_documented_commands_run_as_the_pages_show(private_ray, tmp_path, mode):
    make_workdir(tmp_path)
    failures = run_pages(tmp_path, mode)
    assert failures == [], "\n\n".join(failures)
    # What the pages' commands left behind is what their text says they make.
    demo = tmp_path / "runs" / "demo"
    summary = json.loads((demo / "summary.json").read_text())
    assert set(summary["params"]) == {"lr", "batch_size"} and summary["tuned"]
    assert [answer["true"] for answer in summary["served"]] == [0, 1, 2, 3, 4, 5]
    assert {answer["model_version"] for answer in summary["served"]} == {1}
    # The export scored the model on the held-out photos the summary reports.
    meta = json.loads((demo / "models" / "1" / "metadata.json").read_text())
    assert meta["test"]["images"] == summary["test_n"] == 105
    for model in ("tuned/1", "tuned/2", "r50", "job"):
        assert (tmp_path / "models" / model / "metadata.json").is_file(), model
    # quantize took the repository's newest version, the one `train --deploy` added.
    assert (tmp_path / "models" / "tuned" / "2" / "openvino-int8.xml").is_file()
