"""Evaluation data: GLUE tsv loaders on fixtures of every task's real layout, the XSUM jsonl loader, the offline
proxies (sizes, determinism, recipes) and their export in the real formats."""

import json
import re
import shutil
from pathlib import Path

import pytest

from mom.data.proxies import bible_para, export_proxy, load_classification, news_xsum, rt_polarity
from mom.data.tasks import GLUE_TASKS, PROXY_SIZES, load_glue, load_xsum, split_sentences, task_spec
from mom.errors import DataError

GLUE = Path(__file__).parents[1] / "fixtures" / "glue"
XSUM = Path(__file__).parents[1] / "fixtures" / "xsum"

# task → (sizes, first training example (a, b, label), first example of the first dev split)
EXPECTED = {
    "cola": ({"train": 8, "dev": 4}, ("The sailors rode the breeze clear of the rocks.", None, 1),
             ("The book was written by John.", None, 1)),
    "sst2": ({"train": 8, "dev": 4}, ("hide new secretions from the parental units ", None, 0),
             ("it 's a lovely film with lovely performances ", None, 1)),
    "mrpc": ({"train": 4, "dev": 3}, ("The company said profits rose 10 percent in the quarter .",
                                      "Quarterly profits increased by 10 percent , the company said .", 1),
             ("The judge delayed the trial until March .", "The trial was postponed by the judge until March .", 1)),
    "stsb": ({"train": 5, "dev": 3}, ("A plane is taking off.", "An air plane is taking off.", 5.0),
             ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    "qqp": ({"train": 4, "dev": 2}, ("How do I learn to cook rice?", "What is the best way to cook rice?", 1),
            ("How do I improve my English?", "How can I get better at English?", 1)),
    "mnli": ({"train": 4, "dev_matched": 2, "dev_mismatched": 3},
             ("Conceptually cream skimming has two basic dimensions.",
              "Product and geography are what make cream skimming work.", 2),
             ("The new rights are nice enough.", "Everyone really likes the newest benefits.", 2)),
    "qnli": ({"train": 3, "dev": 2}, ("When did the third Digimon series begin?",
                                      "Unlike the two seasons before it, the third series is set in a different world.", 1),
             ("What is water made of?", "Water is a molecule of hydrogen and oxygen.", 0)),
    "rte": ({"train": 2, "dev": 2}, ("No Weapons of Mass Destruction Found in Iraq Yet.",
                                     "Weapons of Mass Destruction Found in Iraq.", 1),
            ("Dana Reeve, the widow of the actor Christopher Reeve, has died at 44.", "Christopher Reeve had a wife.", 0)),
    "wnli": ({"train": 2, "dev": 2}, ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                                      "The carrot had a hole.", 1),
             ("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0)),
}


# ---------------------------------------------------------------------------------------------- GLUE tsv
@pytest.mark.parametrize("task", list(EXPECTED))
def test_glue_loader_reads_every_task_layout(task):
    sizes, first_train, first_dev = EXPECTED[task]
    spec = GLUE_TASKS[task]
    data = load_glue(GLUE / spec.glue_dir, task)
    assert data.sizes() == sizes
    e = data.train[0]
    assert (e.text_a, e.text_b, e.label) == first_train
    d = data.dev[spec.dev_splits[0]][0]
    assert (d.text_a, d.text_b, d.label) == first_dev
    assert e.where.endswith(("train.tsv:1" if task == "cola" else "train.tsv:2"))  # header is line 1
    labels = {x.label for x in data.train}
    if spec.kind == "regression":
        assert all(isinstance(x, float) and 0 <= x <= 5 for x in labels)
    else:
        assert labels <= set(range(len(spec.labels)))


def test_glue_label_maps_and_mnli_views():
    mnli = load_glue(GLUE / "MNLI", "mnli")
    # gold_label is the last column (dev files also hold label1..label5); classes in HF/GLUE order
    assert [e.label for e in mnli.dev["dev_mismatched"]] == [1, 0, 2]
    assert [e.label for e in mnli.train] == [2, 1, 1, 0]
    assert load_glue(GLUE / "MNLI", "mnli-m").sizes() == {"train": 4, "dev_matched": 2}
    assert load_glue(GLUE / "MNLI", "MNLI-mm").sizes() == {"train": 4, "dev_mismatched": 3}
    assert [e.label for e in load_glue(GLUE / "STS-B", "sts-b").train] == [5.0, 3.8, 3.8, 2.6, 0.0]


def test_glue_root_directory_finds_the_task_subdirectory():
    assert load_glue(GLUE, "SST-2").sizes() == {"train": 8, "dev": 4}


def _copy(task_dir: str, tmp_path: Path) -> Path:
    dst = tmp_path / task_dir
    shutil.copytree(GLUE / task_dir, dst)
    return dst


def test_missing_split_is_named(tmp_path):
    d = _copy("SST-2", tmp_path)
    (d / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"missing dev\.tsv"):
        load_glue(d, "sst2")
    m = _copy("MNLI", tmp_path)
    (m / "dev_mismatched.tsv").unlink()
    load_glue(m, "mnli-m")  # the matched view does not need it
    with pytest.raises(DataError, match=r"missing dev_mismatched\.tsv"):
        load_glue(m, "mnli")
    with pytest.raises(DataError, match="no such directory"):
        load_glue(tmp_path / "nope", "rte")


@pytest.mark.parametrize("task_dir, task, line, bad", [
    ("SST-2", "sst2", 3, "2"), ("RTE", "rte", 2, "entails"), ("CoLA", "cola", 4, "yes")])
def test_label_outside_the_task_set_names_file_and_line(tmp_path, task_dir, task, line, bad):
    d = _copy(task_dir, tmp_path)
    lines = (d / "train.tsv").read_text().split("\n")
    col = GLUE_TASKS[task].label_column
    fields = lines[line - 1].split("\t")
    idx = col if isinstance(col, int) else lines[0].split("\t").index(col)
    fields[idx] = bad
    lines[line - 1] = "\t".join(fields)
    (d / "train.tsv").write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"train\.tsv: line {line}: label '{bad}' is not one of"):
        load_glue(d, task)


def test_bad_stsb_score_and_bad_rows(tmp_path):
    d = _copy("STS-B", tmp_path)
    text = (d / "dev.tsv").read_text().replace("\t4.750\n", "\t5.5\n")
    (d / "dev.tsv").write_text(text)
    with pytest.raises(DataError, match=r"dev\.tsv: line 3: score '5\.5' is not a number in \[0, 5\]"):
        load_glue(d, "stsb")
    q = _copy("QQP", tmp_path)
    (q / "train.tsv").write_text((q / "train.tsv").read_text() + "999\tonly three\tfields\n")
    with pytest.raises(DataError, match=r"train\.tsv: line 6 has 3 tab-separated fields, the header has 6"):
        load_glue(q, "qqp")
    r = _copy("RTE", tmp_path)
    (r / "train.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match="lacks column"):
        load_glue(r, "rte")


def test_unknown_task_and_proxy_lookup():
    with pytest.raises(DataError, match=r"unknown task 'sst3'.*did you mean 'sst2'"):
        task_spec("sst3")
    with pytest.raises(DataError, match="summarisation task"):
        task_spec("news-xsum")
    with pytest.raises(DataError, match="needs --data"):
        load_classification("mrpc", None)


# ---------------------------------------------------------------------------------------------- XSUM jsonl
def test_xsum_directory_and_single_file(tmp_path):
    data = load_xsum(XSUM)
    assert data.sizes() == {"train": 4, "test": 2}
    assert data.test[0].id == "20001" and data.test[0].summary.startswith("Streets in a town centre")
    assert "\n" in data.train[0].document  # documents keep their line structure
    both = tmp_path / "all.jsonl"
    both.write_text((XSUM / "train.jsonl").read_text() + "\n" + (XSUM / "test.jsonl").read_text())
    one = load_xsum(both)
    assert len(one.train) + len(one.test) == 6 and len(one.test) == 1  # 10% of 6, at least one
    assert load_xsum(both).test == one.test  # deterministic


def test_xsum_bad_rows(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"document": "a", "summary": "b"}\n\n{"document": "c"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl: line 3 has no \"summary\" field"):
        load_xsum(f)
    f.write_text('{"document": "a", "summary": "b"}\n{"document": "c", "summary": 3}\n')
    with pytest.raises(DataError, match=r"line 2: \"summary\" is a int"):
        load_xsum(f)
    f.write_text('{"document": "a", "summary": "b"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_xsum(f)
    f.write_text('{"document": "a", "summary": "b"}\n{"document": " ", "summary": "c"}\n{"document": "d", "summary": "e"}\n')
    assert load_xsum(f).skipped == 1
    d = tmp_path / "dir"
    d.mkdir()
    (d / "train.jsonl").write_text('{"document": "a", "summary": "b"}\n')
    with pytest.raises(DataError, match="missing test.jsonl"):
        load_xsum(d)


def test_split_sentences():
    assert split_sentences("Mr. Smith went to Washington. He met Dr. Jones at 3 p.m. Then he left!") == [
        "Mr. Smith went to Washington.", "He met Dr. Jones at 3 p.m. Then he left!"]
    assert split_sentences('The U.S. economy grew. "It is good," he said. J. R. Tolkien wrote books.') == [
        "The U.S. economy grew.", '"It is good," he said.', "J. R. Tolkien wrote books."]
    assert split_sentences("no end") == ["no end"] and split_sentences("  ") == []


# ---------------------------------------------------------------------------------------------- proxies
def _uncached(fn):
    return fn.__wrapped__()


def test_rt_polarity_recipe():
    data = rt_polarity()
    assert data.sizes() == PROXY_SIZES["rt-polarity"]
    assert _uncached(rt_polarity).train == data.train  # deterministic
    movies = {side: {e.where.split(":")[1] for e in rows} for side, rows in (("train", data.train),
                                                                            ("dev", data.dev["dev"]))}
    assert not movies["train"] & movies["dev"]  # split by movie
    texts = [e.text_a for e in data.train + data.dev["dev"]]
    assert len(texts) == len(set(texts)) and all(t and "\t" not in t and "\n" not in t for t in texts)
    positive = sum(e.label for e in data.train) / len(data.train)
    assert 0.5 < positive < 0.65  # fresh 7,403 vs rotten 5,405 in the source


def test_bible_para_recipe():
    data = bible_para()
    assert data.sizes() == PROXY_SIZES["bible-para"]
    assert _uncached(bible_para).dev == data.dev
    for rows in (data.train, data.dev["dev"]):
        assert sum(e.label for e in rows) * 2 == len(rows)  # exactly balanced
        for e in rows:
            _, v1, v2 = e.where.split(":")
            assert (v1 == v2) == (e.label == 1)
            assert e.label == 1 or abs(int(v1) - int(v2)) == 1  # negatives: the neighbouring verse
            assert e.text_a != e.text_b and "[" not in e.text_a
    chapters = [{int(e.where.split(":")[1]) // 1000 for e in rows} for rows in (data.train, data.dev["dev"])]
    assert not chapters[0] & chapters[1]


def test_news_xsum_recipe():
    from mom.data.corpus import news_articles, news_xsum_holdout_ids

    data = news_xsum()
    assert data.sizes() == PROXY_SIZES["news-xsum"]
    assert _uncached(news_xsum).test == data.test
    held = set(news_xsum_holdout_ids())
    rows = {a.id: a for a in news_articles()}
    assert len(data.train) + len(data.test) + data.skipped == len(held)
    for e in data.train + data.test:
        a = rows[int(e.id.split("-")[1])]
        assert a.id in held
        assert "(CNN" not in e.summary and "opinions expressed" not in e.summary
        assert " ".join(e.summary.split()[:6]) not in e.document  # the summary cannot be copied out
    bbc = [e for e in data.train if "bbc.co.uk" in rows[int(e.id.split("-")[1])].url]
    assert bbc and all(e.summary not in e.document for e in bbc)


@pytest.mark.parametrize("proxy, task", [("rt-polarity", "sst2"), ("bible-para", "mrpc")])
def test_export_proxy_round_trips_through_the_glue_loader(tmp_path, proxy, task):
    sizes = export_proxy(proxy, tmp_path)
    assert sizes == PROXY_SIZES[proxy]
    built = load_classification(proxy, None)
    back = load_glue(tmp_path, task)
    key = lambda rows: [(e.text_a, e.text_b, e.label) for e in rows]  # noqa: E731
    assert key(back.train) == key(built.train) and key(back.dev["dev"]) == key(built.dev["dev"])
    assert load_classification(proxy, tmp_path).spec.name == proxy  # read back under its own name


def test_export_news_xsum_round_trips(tmp_path):
    export_proxy("news-xsum", tmp_path)
    back, built = load_xsum(tmp_path), news_xsum()
    assert back.train == built.train and back.test == built.test
    first = json.loads((tmp_path / "test.jsonl").read_text().split("\n")[0])
    assert set(first) == {"id", "document", "summary"}


def test_export_proxy_never_overwrites_without_force(tmp_path):
    # found by a user audit: exporting into a directory replaced the user's own train.tsv silently
    (tmp_path / "train.tsv").write_text("mine\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: already holds train.tsv; pass --force")):
        export_proxy("rt-polarity", tmp_path)
    assert (tmp_path / "train.tsv").read_text() == "mine\n" and not (tmp_path / "dev.tsv").exists()
    export_proxy("rt-polarity", tmp_path, overwrite=True)
    assert load_glue(tmp_path, "sst2").train
