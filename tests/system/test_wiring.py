"""How the parts are wired, end to end: defaults against the reference, loss targets and their direction, the
optimizer groups and the schedule `train()` really builds."""
import pytest
import torch
import torch.nn.functional as F

from minigpt2 import GPT2, GPT2Config
from minigpt2.train import TrainConfig, train
from tasks.base import Example, collate
from tasks.paraphrase import NO_ID, YES_ID, ClozeParaphrase
from tasks.sonnet import SonnetLM


def test_config_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    ref, ours = transformers.GPT2Config(), GPT2Config()
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.dropout == ref.resid_pdrop == ref.embd_pdrop == ref.attn_pdrop


def test_lm_targets_are_the_next_tokens():
    batch = collate([Example("a", [5, 6, 7]), Example("b", [8, 9])], lm_targets=True)
    assert batch["targets"].tolist() == [[6, 7, -100], [9, -100, -100]]


def test_sonnet_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    module = SonnetLM(GPT2(GPT2Config.from_name("tiny"))).eval()
    batch = collate([Example("a", [5, 6, 7, 8])], lm_targets=True)
    hidden = module.gpt(batch["input_ids"], attention_mask=batch["attention_mask"])
    full = hidden @ module.gpt.wte.weight.T
    expected = F.cross_entropy(full[0, :-1], torch.tensor([6, 7, 8]))
    assert torch.allclose(module(batch), expected, atol=1e-5)


def test_cloze_loss_pulls_a_paraphrase_toward_yes():
    torch.manual_seed(0)
    module = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny"))).eval()
    batch = collate([Example("a", [1, 2, 3], label=1), Example("b", [4, 5], label=0)])
    hidden = module.gpt(batch["input_ids"], attention_mask=batch["attention_mask"])
    last = torch.stack([hidden[0, 2], hidden[1, 1]])
    yes_no = last @ module.gpt.wte.weight[[YES_ID, NO_ID]].T
    expected = -(F.log_softmax(yes_no, -1)[0, 0] + F.log_softmax(yes_no, -1)[1, 1]) / 2
    assert torch.allclose(module(batch), expected, atol=1e-5)
    assert module.predict(batch).tolist() == (yes_no.argmax(-1) == 0).long().tolist()


def _tiny_run(tmp_path, monkeypatch, **cfg):
    torch.manual_seed(0)
    module = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny")))
    examples = [Example(str(i), [1 + i % 3, 2], label=i % 2) for i in range(16)]
    seen = {}
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen["groups"] = groups
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    metrics = train(module, examples, collate, TrainConfig(progress=False, **cfg), evaluate=lambda m: {"acc": 0.0},
                    metric="acc")
    return module, seen["groups"], metrics


def test_train_decays_matrices_only(tmp_path, monkeypatch):
    module, groups, _ = _tiny_run(tmp_path, monkeypatch, epochs=1, batch_size=8, weight_decay=0.1)
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    matrices = {n for n, p in module.named_parameters() if p.dim() >= 2}
    assert "gpt.wte.weight" in decayed and decayed == matrices
    assert plain == {n for n, _ in module.named_parameters()} - matrices
    assert all(n.endswith("bias") or ".ln" in n for n in plain)


@pytest.mark.parametrize("schedule,last", [("linear", 0.0), ("constant", 1e-3)])
def test_train_runs_the_schedule_it_was_given(tmp_path, monkeypatch, schedule, last):
    _, _, metrics = _tiny_run(tmp_path, monkeypatch, epochs=2, batch_size=8, lr=1e-3, warmup=0.0,
                              schedule=schedule)
    assert metrics["epochs"][-1]["lr"] == pytest.approx(last)


def test_a_separable_cloze_set_is_learned(tmp_path):
    """The first token decides the label: train() must learn it (a flipped cloze target would learn the inverse)."""
    torch.manual_seed(0)
    sep = [Example(str(i), [10 + i % 2, 2], label=i % 2) for i in range(16)]
    module = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny")))
    train(module, sep, collate, TrainConfig(progress=False, epochs=10, batch_size=8, lr=1e-2, warmup=0.0,
                                            schedule="constant", weight_decay=0.0),
          evaluate=lambda m: {"acc": 0.0}, metric="acc")
    module.eval()
    assert module.predict(collate(sep)).tolist() == [e.label for e in sep]


def test_a_non_finite_dev_figure_stops_training(tmp_path):
    from minigpt2.train import TrainingDiverged, keep_resume_state

    module = ClozeParaphrase(GPT2(GPT2Config.from_name("tiny")))
    examples = [Example(str(i), [1, 2], label=i % 2) for i in range(8)]
    with pytest.raises(TrainingDiverged, match="epoch 1: dev_loss = nan"):
        train(module, examples, collate, TrainConfig(progress=False, epochs=1, batch_size=8),
              evaluate=lambda m: {"acc": 0.5, "dev_loss": float("nan")}, metric="acc",
              callbacks=[keep_resume_state(tmp_path / "last"), lambda end: (tmp_path / "metrics.json").touch()])
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "last").exists()
