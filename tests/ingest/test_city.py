"""InstaCities1M keeps the city as a folder: it becomes items.city, which filter's output and
SQL (the subset() macro) can use to take one city (issue 15)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import duckdb
from conftest import open_db, run_cli, write_jpeg

CITIES = {"newyork": 3, "london": 2}


def _instacities(root):
    """A real InstaCities1M-shaped tree: img_resized_1M/cities_instagram/<city>/<id>.jpg, captions alike."""
    seed = 0
    for city, n in CITIES.items():
        for _ in range(n):
            name = f"{1000 + seed}"
            write_jpeg(root / "img_resized_1M" / "cities_instagram" / city / f"{name}.jpg", seed=seed)
            cap = root / "captions_resized_1M" / "cities_instagram" / city / f"{name}.txt"
            cap.parent.mkdir(parents=True, exist_ok=True)
            cap.write_text(f"a day in {city} #{city}", encoding="utf-8")
            seed += 1
    return root


def _build(src, ws):
    run_cli("build-index", src, "-w", ws, "--model", "curate-tiny", "--pretrained", "none", "--workers", "0")


def _cities(ws):
    con = open_db(str(ws / "curate.duckdb"))
    try:
        return dict(con.execute("SELECT city, count(*) FROM items GROUP BY city").fetchall())
    finally:
        con.close()


def test_the_city_folder_is_a_column_filter_and_sql_use(tmp_path):
    src = _instacities(tmp_path / "InstaCities1M")
    ws = tmp_path / "ws"
    _build(src, ws)
    assert _cities(ws) == CITIES
    run_cli("classify", "-w", ws, "--prompts", "raw")

    out = tmp_path / "kept.csv"
    run_cli("filter", "-w", ws, "--min-prob", "0", "--out", out)
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["city"] for r in rows) == ["london"] * 2 + ["newyork"] * 3
    assert all(f"/{r['city']}/" in r["path"] for r in rows)

    # the README's route to one city: the subset() macro behind `filter`, with a WHERE
    r = run_cli("sql", "-w", ws, "SELECT count(*) AS n, min(city) AS c FROM subset('image', [], 0.0) "
                                 "WHERE city = 'newyork'", "--format", "csv")
    assert r.stdout.splitlines() == ["n,c", "3,newyork"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith("duckdb") and "city = 'newyork'" in ln)
    line = line.replace("], 0.5)", "], 0.0)")  # random weights: no prob reaches 0.5 here
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(line, shell=True, cwd=tmp_path, env=env, check=True, capture_output=True)
    with (tmp_path / "newyork.csv").open(encoding="utf-8") as f:
        assert sorted(r["city"] for r in csv.DictReader(f)) == ["newyork"] * 3


def test_a_workspace_scanned_before_the_column_gets_it_on_the_next_build(tmp_path):
    src = _instacities(tmp_path / "InstaCities1M")
    ws = tmp_path / "ws"
    _build(src, ws)
    con = duckdb.connect(str(ws / "curate.duckdb"))
    con.execute("ALTER TABLE items DROP COLUMN city")  # as a workspace made before city existed
    con.close()
    _build(src, ws)
    assert _cities(ws) == CITIES


def test_a_plain_folder_gets_no_city_column(tmp_path):
    write_jpeg(tmp_path / "photos" / "newyork" / "a.jpg")
    ws = tmp_path / "ws"
    _build(tmp_path / "photos", ws)
    con = open_db(str(ws / "curate.duckdb"))
    cols = {r[0] for r in con.execute("DESCRIBE items").fetchall()}
    con.close()
    assert "city" not in cols


def test_filter_where_takes_one_city(tmp_path):
    """`filter --where city=newyork`: one column's values, compared as text, bound (never SQL text)."""
    src = _instacities(tmp_path / "InstaCities1M")
    ws = tmp_path / "ws"
    _build(src, ws)
    run_cli("classify", "-w", ws, "--prompts", "raw")
    out = tmp_path / "ny.csv"
    r = run_cli("filter", "-w", ws, "--min-prob", "0", "--where", "city=newyork", "--out", out)
    assert "kept 3 of 5 images (any label, image prob >= 0, city = newyork)" in r.output
    with out.open(encoding="utf-8") as f:
        assert sorted(row["city"] for row in csv.DictReader(f)) == ["newyork"] * 3
    # values of one column are alternatives; the column name is matched in any case
    r = run_cli("filter", "-w", ws, "--min-prob", "0", "--where", "City=newyork", "--where", "city=london")
    assert "kept 5 of 5 images" in r.output
    # a value is data, never SQL; an unknown column is refused by name
    assert "kept 0 of 5" in run_cli("filter", "-w", ws, "--min-prob", "0", "--where", "city=x' OR '1'='1").output
    bad = run_cli("filter", "-w", ws, "--where", "town=newyork", expect=1)
    assert "items has no column 'town'" in bad.output and "city" in bad.output
    assert "write COLUMN=VALUE" in run_cli("filter", "-w", ws, "--where", "newyork", expect=1).output


def test_sample_where_draws_from_one_city(tmp_path):
    """`sample --where city=newyork` draws only New York's images, under a name that says so."""
    src = _instacities(tmp_path / "InstaCities1M")
    ws = tmp_path / "ws"
    _build(src, ws)
    run_cli("classify", "-w", ws, "--prompts", "raw")
    r = run_cli("sample", "-w", ws, "--top-classes", "5", "--per-class", "10", "--where", "city=newyork")
    assert "review set image-top5x10-seed0-city=newyork: 3 images" in r.output
    con = open_db(str(ws / "curate.duckdb"))
    try:
        got = con.execute("SELECT i.city, count(*) FROM review_items r JOIN items i ON i.id = r.id "
                          "WHERE r.set_name = 'image-top5x10-seed0-city=newyork' GROUP BY ALL").fetchall()
        freq = con.execute("SELECT sum(frequency) FROM review_classes "
                           "WHERE set_name = 'image-top5x10-seed0-city=newyork'").fetchall()[0][0]
    finally:
        con.close()
    assert got == [("newyork", 3)] and freq == 3      # class frequencies are counted within the city too
    assert "nothing to sample" in run_cli("sample", "-w", ws, "--where", "city=paris", expect=1).output
    assert "items has no column 'town'" in run_cli("sample", "-w", ws, "--where", "town=x", expect=1).output
