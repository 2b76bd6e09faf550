"""SST-5 / CFIMDB (tasks/sentiment.py) on values worked out here: each row's logits from the row run alone (no
padding) through the body, its last hidden state by hand through the linear layer; the loss and the argmax of
those logits by hand; torch's `nn.Dropout` as the referee of the head's dropout; each review's encoding from the
tokenizer's ids cut by hand.

Written against mutmut's survivors (`python tools/mutate.py --auto tasks/sentiment.py`, docs/testing.md)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from course.formats import label_format
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2, last_token_index
from minigpt2.tokenizer import EOT_ID
from tasks import get_task
from tasks.base import Example, collate
from tasks.sentiment import SentimentClassifier, SentimentTask

LENGTHS = (3, 7, 5)  # right-padded to 7 by `collate`: rows 0 and 2 end before the last column


def body(dropout: float = 0.3) -> GPT2:
    torch.manual_seed(0)
    return GPT2(dataclasses.replace(GPT2Config.from_name("tiny"), dropout=dropout))


def batch_of(labels=(4, 0, 2), seed=1) -> tuple[list[Example], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    examples = [Example(str(i), torch.randint(0, 1000, (n,), generator=g).tolist(), label)
                for i, (n, label) in enumerate(zip(LENGTHS, labels))]
    return examples, collate(examples)


def by_hand(module: SentimentClassifier, examples: list[Example]) -> torch.Tensor:
    """Each row alone, unpadded: the hidden state of its last token, then W h + b in fp64."""
    W, b = module.classifier.weight.double(), module.classifier.bias.double()
    rows = []
    for e in examples:
        with torch.no_grad():
            h = module.gpt(torch.tensor([e.input_ids]))[0, -1].double()
        rows.append(W @ h + b)
    return torch.stack(rows)


@pytest.mark.parametrize("num_labels", [5, 2])
def test_logits_are_the_linear_layer_on_each_rows_last_real_token(num_labels):
    module = SentimentClassifier(body(), num_labels).eval()
    examples, batch = batch_of(labels=(1, 0, 1))
    assert batch["attention_mask"][:, -1].tolist() == [0, 1, 0]  # right padding, as collate makes it
    got = module.logits(batch)
    assert got.dtype == torch.float32 and got.shape == (3, num_labels)
    torch.testing.assert_close(got.double(), by_hand(module, examples), rtol=1e-5, atol=1e-6)


def test_the_loss_is_the_mean_cross_entropy_and_the_prediction_the_argmax():
    module = SentimentClassifier(body(), 5).eval()
    examples, batch = batch_of()
    logits = by_hand(module, examples)
    nll = [math.log(sum(math.exp(z) for z in row)) - row[e.label] for row, e in
           zip(logits.tolist(), examples)]
    loss = module(batch)
    assert loss.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    loss.backward()  # a training loss: the head gets its gradient
    assert module.classifier.weight.grad is not None and module.classifier.weight.grad.abs().sum() > 0
    preds = module.predict(batch)
    assert preds.tolist() == [max(range(5), key=row.__getitem__) for row in logits.tolist()]
    assert not preds.requires_grad and preds.dtype == torch.long
    # the accuracy a user reads: the share of those predictions equal to the labels
    task = get_task("sst")
    want = sum(p == e.label for p, e in zip(preds.tolist(), examples)) / len(examples)
    assert task.score(examples, preds.tolist()) == {"accuracy": want}


def test_under_bf16_autocast_the_logits_are_fp32():
    module = SentimentClassifier(body(), 5).eval()
    examples, batch = batch_of()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module.logits(batch)
        loss = module(batch)
    assert got.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(got.double(), by_hand(module, examples), rtol=0.05, atol=0.05)


def test_the_heads_dropout_is_nn_dropout_of_the_configs_p():
    """In training the last hidden state goes through dropout with the body's p (0.3) before the linear layer: the
    same draws as torch's `nn.Dropout(0.3)` from the same seed (the body in eval draws nothing)."""
    module = SentimentClassifier(body(0.3), 5)
    module.train()
    module.gpt.eval()
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout) and not any(m is d for d in
                                                                                   module.gpt.modules())]
    assert [type(m) for m in drops] == [nn.Dropout] and drops[0].p == 0.3
    examples, batch = batch_of()
    with torch.no_grad():
        hidden = torch.stack([module.gpt(torch.tensor([e.input_ids]))[0, -1] for e in examples])
    torch.manual_seed(7)
    got = module.logits(batch)
    torch.manual_seed(7)
    want = module.classifier(nn.Dropout(0.3).train()(hidden))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, module.classifier(hidden))  # something was dropped


def test_a_task_made_fresh_knows_its_name_labels_format_and_files():
    for name, n in (("cfimdb", 2), ("sst", 5)):
        task = SentimentTask(name, num_labels=n)
        fmt = label_format(name)
        assert task.name == name and task.num_labels == n and task.metric == "accuracy"
        assert type(task.format) is type(fmt) and task.format.files == fmt.files and task.files == fmt.files
        assert task.files  # the course's files, by split
        head = task.build(body(0.0))
        assert isinstance(head, SentimentClassifier) and head.classifier.out_features == n
        assert set(head.head_state()) == {"classifier.weight", "classifier.bias"}


def test_encode_keeps_each_reviews_beginning_and_an_empty_one_is_the_end_of_text(tok):
    task = SentimentTask("sst", 5)
    long = "This film is a triumph of style over substance, and the style is not even good."
    ids = tok.encode(long)
    assert len(ids) > 8
    texts = [(long,), ("",), ("Fine.",), (long,)]
    assert task.encode(texts, tok, 8) == [ids[:8], [EOT_ID], tok.encode("Fine."), ids[:8]]
    assert task.encode(texts, tok, len(ids)) == [ids, [EOT_ID], tok.encode("Fine."), ids]
    assert task.encode([(long,), ("",)], tok, 1) == [ids[:1], [EOT_ID]]
    assert EOT_ID == 50256 and tok.decode([EOT_ID]) == "<|endoftext|>"


def test_a_left_padded_batch_takes_each_rows_last_column():
    """`collate` right-pads, but a left-padded batch (as `generate` makes them) has its last real tokens in the last
    column: the logits are the linear layer on the body's hidden state there, gathered by hand."""
    module = SentimentClassifier(body(), 5).eval()
    ids = torch.tensor([[EOT_ID, EOT_ID, 464, 3290, 318], [40, 588, 340, 845, 881], [EOT_ID, 11, 22, 33, 44]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    got = module.logits({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        hidden = module.gpt(ids, attention_mask=mask)[:, -1].double()
    want = hidden @ module.classifier.weight.double().T + module.classifier.bias.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the last 1 of each row, padded on either side (a row without a real token: the last column, as before)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == last_token_index(mask.bool()).tolist() == [3, 1, 2, 0, 3]


def test_the_body_builds_a_graph_only_when_it_trains():
    """Under `no_grad` (evaluation, predictions) the body keeps no graph, nor when it is frozen
    (`--mode last-linear-layer`); a trainable body under gradients does."""
    module = SentimentClassifier(body(), 5)
    _, batch = batch_of()
    with torch.no_grad():
        assert not module.body(batch["input_ids"], batch["attention_mask"]).requires_grad
        assert not module.last_hidden(batch).requires_grad
    assert module.last_hidden(batch).requires_grad
    module.gpt.requires_grad_(False)
    assert not module.last_hidden(batch).requires_grad
