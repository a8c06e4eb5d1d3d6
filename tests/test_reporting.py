"""Reports as the Prefect UI shows them: tables that fit its page inline, wider ones as links to their table
artifacts; the store's copy keeps every table inline."""
from __future__ import annotations

import pandas as pd

from tasks.reporting import UI_TABLE_WIDTH, Report, markdown_table


def test_a_table_wider_than_the_ui_page_links_to_its_table_artifact():
    rep = Report("r")
    narrow = pd.DataFrame({"k": [1, 2], "ari": [0.5, 0.9]})
    wide = pd.DataFrame({f"a_rather_long_column_name_{i}": [1.23456, 2.5] for i in range(8)})
    assert max(map(len, markdown_table(wide).splitlines())) > UI_TABLE_WIDTH
    rep.table("narrow", narrow)
    rep.table("wide", wide)
    keys = {"narrow": "study-narrow", "wide": "study-wide"}
    ui = rep.markdown(embed=True, table_keys=keys)
    assert markdown_table(narrow) in ui
    assert markdown_table(wide) not in ui
    assert "[study-wide](../key/study-wide)" in ui and "2 rows x 8 columns" in ui
    rows = [line for line in ui.splitlines() if line.startswith("|")]
    assert rows and max(map(len, rows)) <= UI_TABLE_WIDTH
    stored = rep.markdown(embed=False)
    assert markdown_table(wide) in stored and "../key/" not in stored


def test_report_tables_are_markdown_tables():
    rep = Report("t")
    rep.table("fits", pd.DataFrame({"quantity": ["alpha_N", "alpha_S"], "value": [0.412345, float("nan")],
                                    "ok": [True, False]}))
    md = rep.markdown(embed=False)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 4 and "quantity" in lines[0] and set(lines[1]) <= set("|-: ")
    assert "0.4123" in lines[2] and "n/a" in lines[3]
