"""The README and docs/ as a user reads them: every results table is what `python -m bench
report` writes from bench/results/ now, no date or table is typed by hand outside those
tables, and the pages stay within the size the project keeps them to."""

import re

import pytest

from bench import report
from conftest import ROOT

PAGES = report.pages()
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def _outside_blocks(text: str) -> str:
    return report.BLOCK.sub("", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_generated_tables_are_what_bench_report_writes_now(page):
    text = page.read_text()
    assert report.render(text, report.load()) == text, \
        f"{page.name} is stale: run `python -m bench report`"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_dates_outside_the_generated_tables(page):
    dated = [ln for ln in _outside_blocks(page.read_text()).splitlines() if DATE.search(ln)]
    assert not dated, f"{page.name}: a dated line outside a generated table: {dated[0]!r}"


def test_every_table_is_on_a_page_and_every_marker_names_a_table():
    used = [m.group(2) for page in PAGES for m in report.BLOCK.finditer(page.read_text())]
    assert sorted(used) == sorted(report.BLOCKS)
    opened = [name for page in PAGES
              for name in re.findall(r"^<!-- bench:([\w-]+) -->$", page.read_text(), re.M)]
    assert sorted(opened) == sorted(used), "a marker without its closing marker"


def test_the_docs_stay_within_their_size():
    assert sum(len(p.read_bytes()) for p in (ROOT / "docs").glob("*.md")) <= 70 * 1024
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
