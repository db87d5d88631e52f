"""GPT-1 classification: it learns learnable labels, its metrics are the confusion matrix's, the
loss is classifier + weight x LM loss, the head reads the classify token, seeds and LoRA hold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run
from safetensors.torch import load_file

from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tasks.classify import add_classifier

FAST = ["--batch-size", "8", "--eval-every", "10", "--quiet", "--json"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "to", "sea", "hill"]


def labelled(path: Path, count: int, seed: int, flipped: int = 0) -> list[dict[str, str]]:
    """Texts of random words ending in "yes" (label pos) or "no" (neg): a label the last
    letters decide, so a tiny model learns it in a few steps. The first `flipped` "yes" texts
    are labelled neg, to make the confusion matrix lopsided."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        word = "yes" if i % 2 == 0 else "no"
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        records.append({"text": f"{body} {word}", "label": "pos" if word == "yes" else "neg"})
    for record in [r for r in records if r["label"] == "pos"][:flipped]:
        record["label"] = "neg"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def finetune_classifier(train: Path, name: str, *extra: str) -> dict:
    args = ["finetune", "tiny", str(train), "--name", name, "--lr", "3e-3", "--muon-lr", "0.02"]
    return json.loads(run(*args, *extra, *FAST).stdout)


def test_classifier_learns_and_reports_the_confusion_matrix(
    base_home: Path, tmp_path: Path
) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    labelled(train, 160, seed=1)
    records = labelled(test, 24, seed=2, flipped=4)
    finetune_classifier(train, "yesno", "--max-steps", "40")
    predicted = [
        json.loads(run("classify", r["text"], "-m", "yesno", "--json").stdout)["label"]
        for r in records
    ]
    cue = ["pos" if r["text"].endswith("yes") else "neg" for r in records]
    learned = sum(p == c for p, c in zip(predicted, cue, strict=True)) / len(records)
    assert learned >= 0.9, predicted  # chance is 0.5
    # the metrics, by hand from (true, predicted) pairs
    labels = ["neg", "pos"]
    confusion = [[0, 0], [0, 0]]
    for r, p in zip(records, predicted, strict=True):
        confusion[labels.index(r["label"])][labels.index(p)] += 1
    scored = json.loads(
        run("eval", "yesno", "--task", "classify", "--data", str(test), "--json").stdout
    )
    assert scored["confusion"] == confusion
    right = confusion[0][0] + confusion[1][1]
    assert scored["accuracy"] == pytest.approx(right / len(records))
    for i, label in enumerate(labels):
        hit = confusion[i][i]
        predicted_i = confusion[0][i] + confusion[1][i]
        actual_i = sum(confusion[i])
        assert scored["per_label"][label]["precision"] == pytest.approx(hit / predicted_i)
        assert scored["per_label"][label]["recall"] == pytest.approx(hit / actual_i)
    # the flipped labels make precision and recall differ, so a swap cannot pass
    assert scored["per_label"]["neg"]["precision"] != scored["per_label"]["neg"]["recall"]
    # a text alone and in a batch beside a longer one (padded): the same probabilities
    alone = json.loads(run("classify", "a cat no", "-m", "yesno", "--json").stdout)
    lines = run(
        "classify", "-m", "yesno", "--json", input="a cat no\nthe dog ran far to the sea yes\n"
    ).stdout.splitlines()
    batched = json.loads(lines[0])
    for label in labels:
        assert batched["probabilities"][label] == pytest.approx(
            alone["probabilities"][label], abs=1e-5
        )


def tiny_classifier() -> tuple[GPT, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(family="modern", vocab_size=40, block_size=12, n_layer=1, n_head=2, n_embd=16)
    )
    add_classifier(model, ["a", "b", "c"])
    lengths = [5, 9, 12]  # rows padded on the right to 12, the classify token last in each
    idx = torch.zeros(3, 12, dtype=torch.long)
    targets = torch.full((3, 12), -100)
    for row, n in enumerate(lengths):
        idx[row, :n] = torch.randint(1, 40, (n,))
        targets[row, : n - 2] = idx[row, 1 : n - 1]
    batch = {
        "idx": idx,
        "targets": targets,
        "cls_positions": torch.tensor([n - 1 for n in lengths]),
        "labels": torch.tensor([2, 0, 1]),
    }
    return model.eval(), batch


def test_classify_loss_is_classifier_plus_weighted_lm_loss() -> None:
    model, batch = tiny_classifier()
    with torch.no_grad():
        # references computed another way: each row alone, cut after its classify token
        rows = [
            model.classifier(model.hidden(batch["idx"][i : i + 1, : int(p) + 1])[0, -1])
            for i, p in enumerate(batch["cls_positions"])
        ]
        cls_loss = F.cross_entropy(torch.stack(rows), batch["labels"])
        lm_logits = model.lm_head(model.hidden(batch["idx"]))
        lm_loss = F.cross_entropy(
            lm_logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100
        )
        assert lm_loss > 0.1 and cls_loss > 0.1
        logits, _ = model(batch["idx"], cls_positions=batch["cls_positions"])
        torch.testing.assert_close(logits, torch.stack(rows), atol=1e-5, rtol=0)
        for weight in (0.0, 0.7, 1.0):
            _, loss = model(**batch, aux_lm_weight=weight)
            assert loss is not None
            assert loss.item() == pytest.approx((cls_loss + weight * lm_loss).item(), abs=1e-5)


def test_aux_lm_weight_changes_training(base_home: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    labelled(train, 60, seed=3)
    for name, weight in (("w0", "0"), ("w1", "1")):
        finetune_classifier(train, name, "--max-steps", "4", "--aux-lm-weight", weight)
    info = {n: json.loads((base_home / f"models/{n}/train.json").read_text()) for n in ("w0", "w1")}
    assert info["w0"]["train"]["aux_lm_weight"] == 0 and info["w1"]["train"]["aux_lm_weight"] == 1
    w0 = load_file(str(base_home / "models/w0/model.safetensors"))
    w1 = load_file(str(base_home / "models/w1/model.safetensors"))
    # the same seed, data and steps: only the LM term differs, and it moves the body
    assert not torch.equal(
        w0["transformer.h.0.mlp.c_fc.weight"], w1["transformer.h.0.mlp.c_fc.weight"]
    )
    assert not torch.equal(w0["classifier.weight"], w1["classifier.weight"])


def test_classifier_head_is_seeded(base_home: Path, tmp_path: Path) -> None:
    """One --seed, the same classifier, whatever the process's RNG held before (two processes
    once gave two heads: the head drew from the unseeded global RNG)."""
    train = tmp_path / "train.jsonl"
    labelled(train, 20, seed=4)
    heads = []
    for name, noise in (("s1", 123), ("s2", 456)):
        torch.manual_seed(noise)  # as a fresh process would start: anywhere
        finetune_classifier(train, name, "--seed", "1", "--max-steps", "1")
        heads.append(load_file(str(base_home / f"models/{name}/model.safetensors")))
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_lora_trains_the_classifier_head(base_home: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    labelled(train, 40, seed=5)
    finetune_classifier(train, "lora", "--lora", "2", "--max-steps", "3")
    tuned = load_file(str(base_home / "models/lora/model.safetensors"))
    # the head starts with zero bias: only training moves it
    assert tuned["classifier.bias"].abs().max() > 0
