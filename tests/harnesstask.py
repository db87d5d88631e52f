"""Test helper: a small multiple-choice task as a JSONL file for `gpt eval --task choice`, and
the same items as an lm-evaluation-harness task YAML over that file (local, offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK = "gptcli_choice"
SENTENCES = [
    ("Once upon a time there was a little", [" fox", " table", " river", " idea"]),
    ("The fox liked to run in the", [" woods", " numbers", " sky", " soup"]),
    ("One day the fox met a", [" bear", " spoon", " window", " cloud"]),
    ("They played with the birds all", [" day", " glass", " under", " pencil"]),
    ("The little girl went to the", [" park", " seven", " blue", " very"]),
    ("She was very happy and", [" smiled", " triangle", " loudly", " seventeen"]),
    ("The sun was shining and the sky was", [" blue", " chair", " eating", " because"]),
    ("He wanted to play with his", [" friends", " ocean", " quickly", " over"]),
    ("At night the moon was", [" bright", " jumping", " table", " seven"]),
    ("The cat sat on the", [" mat", " thought", " singing", " twelve"]),
    ("Tom and Lily went to the", [" beach", " angry", " slowly", " forty"]),
    ("Mom said it was time to", [" sleep", " purple", " carrot", " loud"]),
]


def write_task(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes items.jsonl and a task YAML in `directory`; (jsonl, directory with the YAML)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    jsonl = directory / "items.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        for context, choices in SENTENCES:
            shuffled = choices[:]
            rng.shuffle(shuffled)
            label = shuffled.index(choices[0])
            f.write(json.dumps({"context": context, "choices": shuffled, "label": label}) + "\n")
    yaml = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(jsonl))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    tasks = directory / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{TASK}.yaml").write_text(yaml, encoding="utf-8")
    return jsonl, tasks


def offline_env() -> dict[str, str]:
    """Nothing from the Hugging Face Hub: datasets and models from local files only."""
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
