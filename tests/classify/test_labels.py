"""Label sets and prompt wordings: packaged places205, user files, raw / natural / ensemble / templates."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

from curate.classify.labels import (
    LabelSetError,
    UnknownLabel,
    check_labels,
    load_label_set,
    readable,
)
from curate.classify.prompts import ENSEMBLE_TEMPLATES, PromptError, natural, prompts_for, resolve


def test_places205_is_packaged_with_scenes():
    ls = load_label_set("places205")
    assert len(ls) == 205 and len(set(ls.labels)) == 205
    assert ls.labels[0] == "abbey" and ls.labels[-1] == "yard"
    assert {"cathedral/outdoor", "bakery/shop", "skyscraper", "art_gallery"} <= set(ls.labels)
    scene = dict(zip(ls.labels, ls.scenes, strict=True))
    assert scene["museum/indoor"] == "indoor" and scene["alley"] == "outdoor" and scene["abbey"] == "unknown"
    assert sum(s != "unknown" for s in ls.scenes) == 182


@pytest.mark.parametrize("label, raw, sentence", [
    ("cathedral/outdoor", "outdoor cathedral", "A photo of the outdoor of a cathedral"),
    ("apartment_building/outdoor", "outdoor apartment building", "A photo of the outdoor of an apartment building"),
    ("bakery/shop", "bakery shop", "A photo of a bakery shop"),
    ("skyscraper", "skyscraper", "A photo of a skyscraper"),
    ("museum/indoor", "indoor museum", "A photo of the inside of a museum"),
    ("field/wild", "wild field", "A photo of a wild field"),
    ("underwater/coral_reef", "underwater coral reef", "A photo of an underwater coral reef"),
])
def test_raw_and_natural_follow_the_study(label, raw, sentence):
    assert readable(label) == raw
    assert natural(label) == sentence


def test_wordings_over_the_whole_set():
    ls = load_label_set("places205")
    for name in ("raw", "natural", "ensemble"):
        ps = prompts_for(ls, name)
        assert len(ps) == 205 and all(p and all(t.strip() for t in p) for p in ps)
        assert not any("_" in t or "/" in t for p in ps for t in p)   # readable everywhere
    ens = dict(zip(ls.labels, prompts_for(ls, "ensemble"), strict=True))
    # every template, plus the scene template where the name does not say indoor/outdoor
    assert len(ens["abbey"]) == len(ENSEMBLE_TEMPLATES)                # scene unknown
    assert "a photo of the inside of an airport terminal." in ens["airport_terminal"]
    assert "a photo of an alley, outdoors." in ens["alley"]
    assert len(ens["museum/indoor"]) == len(ENSEMBLE_TEMPLATES)


def test_user_text_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# my labels\nrooftop bar\n\nstreet_food\nO'Brien's pub\n", encoding="utf-8")
    ls = load_label_set(f)
    assert ls.labels == ("rooftop bar", "street_food", "O'Brien's pub")
    assert prompts_for(ls, "natural")[1] == ["A photo of a street food"]


def test_user_csv_with_prompts(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("Label,prompt\nrooftop_bar,a bar on a roof at night\nbeach,\n", encoding="utf-8")
    ls = load_label_set(f)
    assert ls.labels == ("rooftop_bar", "beach")
    assert prompts_for(ls, "natural") == [["a bar on a roof at night"], ["A photo of a beach"]]
    assert prompts_for(ls, "raw") == [["rooftop bar"], ["beach"]]
    assert prompts_for(ls, "ensemble")[0][-1] == "a bar on a roof at night"
    headless = tmp_path / "plain.csv"
    headless.write_text("pier,a wooden pier\nharbor\n", encoding="utf-8")
    assert load_label_set(headless).prompts == ("a wooden pier", None)
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("label\tprompt\tscene\nloft\ta loft\tindoor\n", encoding="utf-8")
    assert load_label_set(tsv).scenes == ("indoor",)


@pytest.mark.parametrize("content, message", [("", "no labels"), ("a\nb\na\n", "twice")])
def test_bad_label_files(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(LabelSetError, match=message):
        load_label_set(f)
    with pytest.raises(LabelSetError, match="no label set"):
        load_label_set(tmp_path / "missing.txt")


def test_user_templates(tmp_path):
    f = tmp_path / "templates.txt"
    f.write_text("# scenes\na photo of {a} {label}.\n{label} on instagram {#nyc}\n", encoding="utf-8")
    w = resolve(f)
    assert prompts_for(load_label_set("places205"), w)[61] == [
        "a photo of an outdoor cathedral.", "outdoor cathedral on instagram {#nyc}"]
    assert resolve("a snapshot of {}").templates == ("a snapshot of {}",)
    with pytest.raises(PromptError, match="no place for the label"):
        resolve("a photo of {something}")
    with pytest.raises(PromptError, match="unknown prompts"):
        resolve("fancy")


def test_unknown_labels_name_the_closest():
    known = load_label_set("places205").labels
    assert check_labels(["skyscraper", "bridge"], known) == ["skyscraper", "bridge"]
    with pytest.raises(UnknownLabel, match=r"'skyscrapers' \(closest: skyscraper"):
        check_labels(["skyscrapers"], known)
    with pytest.raises(UnknownLabel, match=r"closest: bakery/shop"):
        check_labels(["bakery shop"], known)
    with pytest.raises(UnknownLabel, match="unknown label"):
        check_labels(["skyscraper'; DROP TABLE items; --"], known)


def test_cli_labels(tmp_path):
    out = run_cli("labels", "--set", "places205", "--prompts", "natural").output
    assert "cathedral/outdoor" in out and "A photo of the outdoor of a cathedral" in out
    assert len(re.findall(r"^ *\d+  \S", out, flags=re.M)) == 205
    ens = run_cli("labels", "--prompts", "ensemble").output
    assert "a blurry photo of a skyscraper." in ens
    assert "unknown prompts" in run_cli("labels", "--prompts", "nope", expect=1).output


def test_labels_match_up_to_case_and_separators_when_one_label_fits():
    from curate.classify.labels import match_labels

    known = load_label_set("places205").labels
    assert match_labels(["Skyscraper", "bakery shop", "Bakery_Shop", "skyscraper"], known) == [
        ("Skyscraper", "skyscraper"), ("bakery shop", "bakery/shop"), ("Bakery_Shop", "bakery/shop"),
        ("skyscraper", "skyscraper")]
    # the readable form a prompt uses names its label too
    assert match_labels(["Outdoor apartment building"], known) == [
        ("Outdoor apartment building", "apartment_building/outdoor")]
    with pytest.raises(UnknownLabel, match=r"'bakery' \(closest: bakery/shop"):
        match_labels(["bakery"], known)
    # two labels that differ only in case or separators: neither is guessed
    mine = ["hot_dog", "hot dog", "Dog", "dog"]
    assert match_labels(["hot_dog", "Dog"], mine) == [("hot_dog", "hot_dog"), ("Dog", "Dog")]
    with pytest.raises(UnknownLabel, match=r"'HOT-DOG' matches 2 labels \(hot_dog, hot dog\): give one of them"):
        match_labels(["HOT-DOG"], mine)
    with pytest.raises(UnknownLabel, match=r"'DOG' matches 2 labels"):
        match_labels(["DOG"], mine)
