"""Readers, writers, heads and metrics of the four tasks, on the small fixtures in experiments/tiny_data/tasks/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from course.files import COURSE_FILES
from course.formats import FORMATS, label_format, read_generated, write_sonnets
from course.readers import DataError, MissingDataError, clean_text, read_sonnets, read_table, require_files
from course.sonnets import parse_sonnets
from experiments.sweeps import TINY_DATA
from minigpt2.generation import Sampling
from minigpt2.metrics import accuracy, bootstrap_interval, chrf
from tasks import TASKS, collate, get_task
from tasks.base import ClassificationTask, GenerativeTask, PredictSettings
from tasks.paraphrase import ANSWER_IDS, encode_pair
from tasks.sonnet import finish_sonnet, sonnet_stop

read_para, read_sentiment = label_format("quora").read_predictions, label_format("sst").read_predictions

FIX = TINY_DATA / "tasks"


# ------------------------------------------------------------------------------------------------ readers

def test_table_reads_quoted_cells_and_html():
    t = read_table(FIX / "ids-sst-train.csv", ["id", "sentence"], "sentiment", set(range(5)))
    assert len(t.rows) == 9 and not t.malformed
    messy = t.rows[-1]
    assert messy["sentence"] == '"A quoted" title : fun<br />to watch , really .'  # CSV doubled quotes undone
    assert clean_text(messy["sentence"]) == '"A quoted" title : fun to watch , really .'
    assert messy["sentiment"] == "4"


def test_crlf_file_and_empty_label_is_reported_with_its_line():
    t = read_table(FIX / "quora-dev.csv", ["id", "sentence1", "sentence2"], "is_duplicate", {0, 1})
    assert len(t.rows) == 8
    assert all(not r["sentence2"].endswith("\r") and r["is_duplicate"] in ("0", "1") for r in t.rows)
    assert [str(m) for m in t.malformed] == [f"{FIX / 'quora-dev.csv'}:10: label 'is_duplicate' is '', not a number"]


def test_test_student_files_have_no_labels(tok):
    for name in ("sst", "cfimdb", "quora"):
        examples, bad = get_task(name).load(FIX, "test", tok, 128)
        assert len(examples) == 4 and not bad
        assert all(e.label is None and 0 < len(e.input_ids) <= 128 for e in examples)


def test_out_of_range_label_and_short_row_are_reported(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t1\n1\tb\tbad\t7\n2\tc\n3\td\tok\t0.5\n")
    t = read_table(f, ["id", "sentence"], "sentiment", {0, 1})
    assert [r["id"] for r in t.rows] == ["a"]
    reasons = [(m.line, m.reason) for m in t.malformed]
    assert reasons[0] == (3, "label 'sentiment' is '7', expected one of [0, 1]")
    assert reasons[1] == (4, "2 cells, expected 4")
    assert reasons[2][0] == 5


def test_missing_column_and_missing_file_errors(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("\tid\ttext\n0\ta\tb\n")
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) \['sentence'\]"):
        read_table(f, ["id", "sentence"])
    with pytest.raises(MissingDataError) as e:
        require_files(tmp_path, ["quora-train.csv", "quora-dev.csv"], "quora")
    msg = str(e.value)
    assert "quora-train.csv" in msg and "quora-dev.csv" in msg
    assert "python -m course fetch --task quora" in msg


def test_sonnets_crlf_header_and_numbers(tmp_path):
    sonnets, notes = read_sonnets(FIX / "sonnets.txt", expect_lines=14)
    assert [s.number for s in sonnets] == [1, 2, 3, 4, 5, 6] and not notes
    assert sonnets[0].lines[0] == "From fairest creatures we desire increase,"
    assert sonnets[0].lines[12].startswith("  Pity the world")  # the couplet's indent is kept
    assert all("\r" not in s.text for s in sonnets)
    prompts, _ = read_sonnets(FIX / "sonnets_held_out_dev.txt")
    assert [len(p.lines) for p in prompts] == [3, 3, 3]
    short, notes = read_sonnets(FIX / "sonnets_held_out_dev.txt", expect_lines=14)
    assert len(notes) == 3 and str(notes[0]).endswith("sonnets_held_out_dev.txt:12: sonnet 132 has 3 lines, expected 14")
    with pytest.raises(DataError, match="no numbered sonnets"):
        (tmp_path / "f.txt").write_text("just a header\nno numbers here\n")
        read_sonnets(tmp_path / "f.txt")
    assert parse_sonnets("just a header\nno numbers here\n") == []  # the library parser leaves the error to callers


# ------------------------------------------------------------------------------------------ prediction files

def test_sentiment_predictions_match_course_format_and_parse_back(tmp_path, tok):
    task = get_task("sst")
    examples, _ = task.load(FIX, "dev", tok, 64)
    preds = [i % 5 for i in range(len(examples))]
    path = tmp_path / task.format.output_name("dev", "full-model")
    assert path.name == "full-model-sst-dev-out.csv"
    task.format.write_predictions(path, [e.id for e in examples], preds)
    lines = path.read_text().split("\n")
    assert lines[0] == "id \t Predicted_Sentiment "
    assert lines[1] == f"{examples[0].id}, 0 "
    assert read_sentiment(path) == {e.id: p for e, p in zip(examples, preds)}


def test_paraphrase_predictions_use_answer_tokens_and_parse_back(tmp_path, tok):
    task = get_task("quora")
    examples, _ = task.load(FIX, "test", tok, 128)
    preds = [1, 0, 1, 1]
    path = tmp_path / task.format.output_name("test", "full-model")
    assert path.name == "para-test-output.csv"
    task.format.write_predictions(path, [e.id for e in examples], preds)
    lines = path.read_text().split("\n")
    assert lines[0] == "id \t Predicted_Is_Paraphrase "
    assert lines[1] == f"{examples[0].id}, 8505 " and lines[2] == f"{examples[1].id}, 3919 "
    assert read_para(path) == {e.id: p for e, p in zip(examples, preds)}
    path.write_text("id \t Predicted_Is_Paraphrase \nabc, 7 \n")
    with pytest.raises(ValueError, match="unexpected prediction value"):
        read_para(path)
    path.write_text("id,pred\nabc, 1\n")
    with pytest.raises(ValueError, match=":1: expected the header"):
        read_para(path)


def test_generated_sonnets_layout_parses_back(tmp_path):
    sonnets = [(132, "Line one,\nLine two,\n  and a couplet."), (133, "Another\nsonnet")]
    path = tmp_path / "generated_sonnets_dev.txt"
    write_sonnets(path, sonnets)
    text = path.read_text()
    assert text.startswith("--Generated Sonnets-- \n\n\n132\nLine one,\n")
    back = read_generated(path)
    assert [(s.number, s.text) for s in back] == sonnets


def test_course_files_are_named_and_each_task_reaches_its_format():
    quora, sonnet = COURSE_FILES["quora"], COURSE_FILES["sonnet"]
    assert (quora.train, quora.dev, quora.test, quora.test_labels) == (
        "quora-train.csv", "quora-dev.csv", "quora-test-student.csv", "quora-test-labels.csv")
    assert quora.inputs() == (quora.train, quora.dev, quora.test) and quora.inputs("dev") == (quora.dev,)
    assert quora.test_references == quora.test_labels and quora.all() == quora.inputs() + (quora.test_labels,)
    # a run needs the dev prompts and their true sonnets; the true test sonnets are optional
    assert sonnet.inputs() == ("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt",
                               "sonnets_held_out.txt")
    assert sonnet.inputs("dev") == (sonnet.dev, sonnet.dev_true) and sonnet.inputs("test") == (sonnet.test,)
    assert sonnet.split("train") == "sonnets.txt" and sonnet.test_references == "TRUE_sonnets_held_out.txt"
    for name in ("sst", "cfimdb", "quora", "sonnet"):
        task = get_task(name)
        assert task.format is FORMATS[name] and task.files is COURSE_FILES[name] is task.format.files
    with pytest.raises(DataError, match="has no labels"):
        label_format("sonnet")


def test_formats_read_ids_and_references_by_id(tmp_path):
    sst = get_task("sst").format
    sst.write_predictions(tmp_path / "p.csv", ["b", "a", "c"], [1, 2, 3])
    assert sst.prediction_ids(tmp_path / "p.csv") == ["b", "a", "c"]
    assert sst.references_by_id(FIX, "dev") == sst.dev_labels(FIX) == sst.split_labels(FIX, "dev")
    sonnets = get_task("sonnet").format
    truths = sonnets.split_references(FIX, "dev")
    assert truths and sonnets.references_by_id(FIX, "dev") == {str(n): t for n, t in truths.items()}
    assert sonnets.reference_ids(FIX, "dev") == {str(n) for n in truths}
    sonnets.write_predictions(tmp_path / "g.txt", ["140", "132", "140"], ["x", "y", "z"])
    assert sonnets.prediction_ids(tmp_path / "g.txt") == ["140", "132"]  # each once, in file order
    assert sonnets.output_name("dev", "full-model") == "generated_sonnets_dev.txt"
    assert sonnets.output_name("test", "last-linear-layer") == "generated_sonnets.txt"
    cfimdb = get_task("cfimdb").format
    assert cfimdb.output_name("test", "last-linear-layer") == "last-linear-layer-cfimdb-test-out.csv"


# ------------------------------------------------------------------------------------- one classification loader

# (task, split, limit, seed) -> positions in file order of the rows a seeded subset keeps, as the two loaders chose
# them before they became one (main at d596cd2): a run's --max-train / --max-eval rows must not change with it.
PINNED_SUBSETS = {
    ("sst", "train", 3, 0): [2, 3, 5], ("sst", "train", 5, 7): [0, 3, 6, 7, 8], ("sst", "train", 4, 11): [0, 6, 7, 8],
    ("sst", "dev", 3, 0): [1, 3, 6], ("sst", "dev", 5, 7): [2, 4, 5, 6, 7], ("sst", "dev", 4, 11): [0, 1, 3, 6],
    ("sst", "test", 3, 0): [1, 2, 3],
    ("cfimdb", "train", 3, 0): [1, 6, 7], ("cfimdb", "train", 5, 7): [0, 2, 3, 5, 6],
    ("cfimdb", "train", 4, 11): [1, 3, 4, 7],
    ("cfimdb", "dev", 3, 0): [0, 5, 6], ("cfimdb", "dev", 5, 7): [2, 4, 5, 6, 7], ("cfimdb", "dev", 4, 11): [1, 2, 3, 7],
    ("cfimdb", "test", 3, 0): [1, 2, 3],
    ("quora", "train", 3, 0): [1, 2, 4], ("quora", "train", 5, 7): [0, 1, 2, 4, 5],
    ("quora", "train", 4, 11): [3, 4, 5, 6],
    ("quora", "dev", 3, 0): [0, 3, 4], ("quora", "dev", 5, 7): [1, 3, 5, 6, 7], ("quora", "dev", 4, 11): [0, 1, 2, 4],
    ("quora", "test", 3, 0): [1, 2, 3],
}


@pytest.mark.parametrize("name", ["sst", "cfimdb", "quora"])
def test_seeded_subsets_keep_the_rows_they_kept_before_the_loaders_were_one(name, tok):
    task = get_task(name)
    assert type(task).load is ClassificationTask.load  # one loader: the task declares only its encoding
    for split in ("train", "dev", "test"):
        every, _ = task.load(FIX, split, tok, 64)
        by_id = {e.id: e for e in every}
        for (n, s, limit, seed), positions in PINNED_SUBSETS.items():
            if (n, s) != (name, split):
                continue
            some, _ = task.load(FIX, split, tok, 64, limit=limit, seed=seed)
            assert [e.id for e in some] == [every[i].id for i in positions], (split, limit, seed)
            # Each kept row is the whole row: its label and token ids as an unlimited read gives them.
            assert [(e.label, e.input_ids) for e in some] == [(by_id[e.id].label, by_id[e.id].input_ids)
                                                              for e in some]


@pytest.mark.parametrize("name", ["sst", "quora"])
def test_a_classification_task_takes_no_extra_texts(name, tok):
    with pytest.raises(DataError, match=f"task '{name}' takes no extra training texts"):
        get_task(name).load(FIX, "train", tok, 64, extra_texts=["a synthetic sonnet"])


# ------------------------------------------------------------------------------------------ prompts, heads

def test_one_cloze_prompt_for_every_split(tok):
    task = get_task("quora")
    for split in ("train", "dev", "test"):
        examples, _ = task.load(FIX, split, tok, 128)
        text = tok.decode(examples[0].input_ids)
        assert text.startswith('Question 1: "') and text.endswith('"\nAre these questions asking the same thing?\n')
    assert [tok.decode([i]) for i in ANSWER_IDS] == ["yes", "no"]


def test_long_pair_is_cut_inside_the_questions(tok):
    ids = encode_pair(tok, "word " * 200, "other " * 200, 64)
    text = tok.decode(ids)
    assert len(ids) <= 64 and text.endswith("Are these questions asking the same thing?\n")


class _LinearSpy:
    """Records the output shape of every F.linear call (nn.Linear and the tied LM head both use it)."""

    def __init__(self, monkeypatch):
        self.shapes: list[tuple[int, ...]] = []
        real = F.linear

        def spy(x, w, b=None):
            out = real(x, w, b)
            self.shapes.append(tuple(out.shape))
            return out
        monkeypatch.setattr(torch.nn.functional, "linear", spy)


@pytest.mark.parametrize("name", ["sst", "quora"])
def test_classifier_and_cloze_compute_neither_vocab_logits_nor_rows_never_read(name, tok, tiny, monkeypatch):
    task = get_task(name)
    examples, _ = task.load(FIX, "train", tok, 128)
    module = task.build(tiny)
    batch = collate(examples[:4])
    spy = _LinearSpy(monkeypatch)
    loss = module(batch)
    loss.backward()
    preds = module.predict(batch)
    V = tiny.config.vocab_size
    assert spy.shapes and not any(s[-1] == V for s in spy.shapes), "a (.., vocab) tensor was built"
    assert preds.shape == (4,)
    if name == "quora":
        assert (4, 2) in spy.shapes  # the two answer columns only
    # The last block's MLP runs at each row's last real token only, in the loss's forward and in predict's.
    C, L, T = tiny.config.n_embd, tiny.config.n_layer, batch["input_ids"].size(1)
    assert [s for s in spy.shapes if s[-1] == 4 * C] == ([(4, T, 4 * C)] * (L - 1) + [(4, 1, 4 * C)]) * 2


def test_only_the_sonnet_task_is_generative_and_predicts_its_first_draw(tok, tiny):
    assert {n: isinstance(t, GenerativeTask) for n, t in TASKS.items()} == {
        "sst": False, "cfimdb": False, "quora": False, "sonnet": True}
    for name in ("sst", "cfimdb", "quora"):  # what only a generative task has lives on GenerativeTask
        assert not any(hasattr(get_task(name), a) for a in ("predict_samples", "heldout_nll", "train_texts"))
    assert not any(hasattr(t, "generative") for t in TASKS.values())  # the old flag is gone, nothing reads it
    sonnet = get_task("sonnet")
    examples, _ = sonnet.load(FIX, "dev", tok, 128, limit=2)
    how = PredictSettings(batch_size=2, sampling=Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3))
    module, cpu = sonnet.build(tiny), torch.device("cpu")
    draws = sonnet.predict_samples(module, examples, how, tok, cpu, samples=2)
    assert sonnet.predict(module, examples, how, tok, cpu) == draws[0] != draws[1]


def test_sonnet_lm_loss_matches_full_logits(tok, tiny):
    task = get_task("sonnet")
    examples, _ = task.load(FIX, "train", tok, 128)
    module = task.build(tiny)
    batch = collate(examples[:2], lm_targets=True)
    expected = F.cross_entropy(tiny.logits(batch["input_ids"], batch["attention_mask"]).flatten(0, 1),
                               batch["targets"].flatten(), ignore_index=-100)
    torch.testing.assert_close(module(batch), expected)
    full, _ = task.load(FIX, "train", tok, 1024)
    assert all(e.input_ids[-1] == tok.eot_id for e in full)  # each sonnet ends with <|endoftext|>
    assert all(len(e.input_ids) == 128 for e in examples)  # ... unless cut to the model's window


def test_sonnet_trains_with_the_plain_loss_and_the_fast_switch_puts_the_chunked_one_in(tok, tiny, monkeypatch):
    # the task itself runs the plain lm_loss; `minigpt2.fast.for_training` (the application's switch) swaps in the
    # chunked loss, which gives the same value
    from minigpt2 import fast
    from minigpt2.fast import chunked_loss

    calls = []
    real = chunked_loss._ChunkedCrossEntropy.apply
    monkeypatch.setattr(chunked_loss._ChunkedCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    task = get_task("sonnet")
    examples, _ = task.load(FIX, "train", tok, 64)
    module = task.build(tiny)
    batch = collate(examples[:2], lm_targets=True)
    plain = module(batch)
    assert calls == []
    fast.for_training(module, torch.device("cpu"))
    module.eval()  # no dropout: the two losses see the same numbers
    chunked = module(batch)
    chunked.backward()
    assert calls == [1]
    module.train()
    torch.testing.assert_close(chunked, task.build(tiny).eval()(batch), rtol=1e-5, atol=1e-5)
    assert plain.requires_grad


def test_sonnet_stop_after_fourteenth_line(tok):
    stop = sonnet_stop(tok, 11)
    eleven = "".join(f"line {i}\n" for i in range(11))
    assert not stop(tok.encode(eleven[:-1]))  # the 11th line is not finished yet
    assert not stop(tok.encode("a\n\n\nb\n"))  # blank lines do not count
    assert stop(tok.encode(eleven))
    prompt = ("one", "two", "three")
    full = finish_sonnet(prompt, "\n" + eleven + "extra\n12\nmore")
    assert full.split("\n") == list(prompt) + [f"line {i}" for i in range(11)]


# ------------------------------------------------------------------------------------------------ metrics

def test_chrf_equals_sacrebleu_corpus_chrf():
    hyps = ["The cat sat on the mat.", "Shall I compare thee to a summer's day?", "x"]
    refs = ["A cat sat on a mat.", "Shall I compare thee to a summers day", "y z"]
    assert chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert chrf(refs, refs) == 100.0
    with pytest.raises(ValueError, match="2 hypotheses for 3 references"):
        chrf(hyps[:2], refs)


def test_accuracy_and_bootstrap():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert accuracy([3919 == 3919], [1]) == 1.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 2, 3], [1, 2])
    preds, labels = [1] * 60 + [0] * 40, [1] * 100
    lo, hi = bootstrap_interval(lambda i: accuracy([preds[k] for k in i], [labels[k] for k in i]), 100, samples=300)
    assert lo < 0.6 < hi and 0.45 < lo and hi < 0.75


# ------------------------------------------------------------------------------------------------ real data

REAL_ROWS = {  # file -> (usable rows, malformed rows), from ../shared/data/README.md
    "ids-sst-train.csv": (8544, 0), "ids-sst-dev.csv": (1101, 0), "ids-sst-test-student.csv": (2210, 0),
    "ids-cfimdb-train.csv": (1707, 0), "ids-cfimdb-dev.csv": (245, 0), "ids-cfimdb-test-student.csv": (488, 0),
    "quora-train.csv": (14214, 0), "quora-dev.csv": (3999, 1), "quora-test-student.csv": (2000, 0),
}


@pytest.mark.shared_data
def test_every_real_file_reads_with_the_documented_row_counts(tok):
    folder = os.environ.get("MINIGPT2_DATA_DIR")
    if not folder:
        pytest.skip("MINIGPT2_DATA_DIR is not set")
    folder = Path(folder)
    counts = {}
    for name in ("sst", "cfimdb", "quora"):
        task = get_task(name)
        for split in ("train", "dev", "test"):
            file = task.files.split(split)
            examples, bad = task.load(folder, split, tok, 1024)
            counts[file] = (len(examples), len(bad))
            for m in bad:
                print(f"malformed: {m}")
            if split != "test":
                assert all(e.label is not None for e in examples)
    assert counts == REAL_ROWS
    sonnets, notes = read_sonnets(folder / "sonnets.txt", expect_lines=14)
    assert [s.number for s in sonnets] == list(range(1, 132))
    print("irregular sonnets:", [str(n) for n in notes])  # Shakespeare's 99 (15 lines) and 126 (12 lines)
    assert {int(str(n).split("sonnet ")[1].split()[0]) for n in notes} == {99, 126}
    task = get_task("sonnet")
    dev, _ = task.load(folder, "dev", tok, 1024)
    test, _ = task.load(folder, "test", tok, 1024)
    assert [int(e.id) for e in dev] == list(range(132, 144))
    assert [int(e.id) for e in test] == list(range(145, 157))
    assert all(len(e.meta["prompt_lines"]) == 3 and len(e.meta["reference"].split("\n")) == 14 for e in dev)
    print("row counts:", counts)
