"""The benchmark datasets in ../shared/datasets and their train/test splits (see each folder's PROVENANCE.md).

    from bench.datasets import load_split, DEFAULT_DATA_DIR
    split = load_split(DEFAULT_DATA_DIR, "mr")       # split.train_texts, split.train_labels, split.test_texts, ...

Every file is UTF-8 CSV with the header `text,label`. The splits:
- trec, banking77, sst2_glue, nlpcc2017_headlines: train.csv / test.csv (sst2_glue's test.csv is the GLUE dev
  set; nlpcc2017_headlines is Chinese written without spaces, its files the shared folder's 80/20 split of the
  NLPCC 2017 full test set).
- sst2: train.csv / dev.csv / test.csv; we train on train and test on test (dev is unused).
- mr, sms_spam: all.csv + cv10_folds.csv (`row,fold`, 0-based rows of all.csv); fold 0 is the test set, folds
  1-9 train. The folds are the shared folder's own stratified assignment, not the papers'.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path(os.environ.get(
    "TEXTCLF_BENCH_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))

# name -> ("files", train file, test file) or ("folds", all file, test fold)
SPLITS: dict[str, tuple[str, str, str | int]] = {
    "trec": ("files", "train.csv", "test.csv"),
    "sst2": ("files", "train.csv", "test.csv"),
    "mr": ("folds", "all.csv", 0),
    "sms_spam": ("folds", "all.csv", 0),
    "banking77": ("files", "train.csv", "test.csv"),
    "sst2_glue": ("files", "train.csv", "test.csv"),
    "nlpcc2017_headlines": ("files", "train.csv", "test.csv"),
}
DATASETS = list(SPLITS)


@dataclass(frozen=True)
class Split:
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]

    @property
    def label_names(self) -> list[str]:
        """Every label in train or test, sorted (index = class id)."""
        return sorted(set(self.train_labels) | set(self.test_labels))


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from a `text,label` CSV."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def read_folds(path: Path) -> dict[int, int]:
    """row -> fold from a `row,fold` CSV."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return {int(r["row"]): int(r["fold"]) for r in csv.DictReader(f)}


def load_split(data_dir: Path, name: str) -> Split:
    """The train and test sets of dataset `name` under `data_dir`."""
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(SPLITS)}")
    folder = Path(data_dir) / name
    kind, first, second = SPLITS[name]
    if kind == "files":
        train_texts, train_labels = read_csv(folder / first)
        test_texts, test_labels = read_csv(folder / str(second))
        return Split(name, train_texts, train_labels, test_texts, test_labels)

    texts, labels = read_csv(folder / first)
    folds = read_folds(folder / "cv10_folds.csv")
    if sorted(folds) != list(range(len(texts))):
        raise ValueError(f"{folder / 'cv10_folds.csv'} does not assign every row of {first} exactly once")
    test = [folds[i] == second for i in range(len(texts))]
    return Split(
        name,
        [t for t, is_test in zip(texts, test) if not is_test], [y for y, is_test in zip(labels, test) if not is_test],
        [t for t, is_test in zip(texts, test) if is_test], [y for y, is_test in zip(labels, test) if is_test],
    )
