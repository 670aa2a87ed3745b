"""scripts/lint_realworld.py: precision/recall over a local folder named by the manifest."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("lint_realworld", ROOT / "scripts" / "lint_realworld.py")
lint_realworld = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lint_realworld)
CORPUS = Path(__file__).parent / "lint_corpus"


def test_counts_hits_misses_false_alarms_and_missing_files(tmp_path, capsys):
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "files" / f"someone+project@{commit[:10]}"
    folder.mkdir(parents=True)
    (folder / "buggy.py").write_text((CORPUS / "bug_seed_classic.py").read_text())
    (folder / "clean.py").write_text((CORPUS / "ok_train_each_epoch.py").read_text())
    (folder / "labelled_ok_but_buggy.py").write_text((CORPUS / "bug_gan.py").read_text())
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["repo", "commit", "path", "label", "eval_line", "loop_line", "reason"])
        writer.writerow(["someone/project", commit, "buggy.py", "bug", "15", "24", "r1"])
        writer.writerow(["someone/project", commit, "clean.py", "ok", "", "", "r2"])
        writer.writerow(["someone/project", commit, "labelled_ok_but_buggy.py", "ok", "", "", "r3"])
        writer.writerow(["someone/project", commit, "absent.py", "bug", "", "", "r4"])
    result = tmp_path / "realworld.json"
    assert (
        lint_realworld.main([str(tmp_path / "files"), "--manifest", str(manifest), "--json", str(result)])
        == 0
    )
    out = capsys.readouterr().out
    written = json.loads(result.read_text())
    assert written["counts"] == {"tp": 1, "fp": 1, "fn": 0, "tn": 1, "missing": 1}
    assert written["machine"]["cpu"] and len(written["machine"]["load_average"]) == 3 and written["date"]
    assert [row["flagged"] for row in written["outcomes"]] == [True, False, True]
    assert "false alarm  someone/project@0123456789 labelled_ok_but_buggy.py: r3" in out
    assert "missing      someone/project@0123456789 absent.py" in out
    assert "tp=1 fp=1 fn=0 tn=1 precision=0.50 recall=1.00" in out


def test_bad_root_is_a_usage_error(tmp_path, capsys):
    assert lint_realworld.main([str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_manifest_rows_are_complete():
    with lint_realworld.DEFAULT_MANIFEST.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [row["label"] for row in rows]
    assert labels.count("bug") >= 20 and labels.count("ok") >= 30  # issue 11's size
    assert len({(row["repo"], row["commit"], row["path"]) for row in rows}) == len(rows)
    for row in rows:
        assert row["label"] in {"bug", "ok"} and len(row["commit"]) == 40 and row["path"].endswith(".py")
        assert row["reason"]
        if row["label"] == "bug":
            assert row["eval_line"] and row["loop_line"]


RESULT = ROOT / "docs" / "results" / "lint" / "realworld.json"


def test_committed_realworld_score_matches_the_manifest_and_the_docs():
    """docs/results/lint/realworld.json is a run of the script on the whole manifest, and the
    row that docs/LINT.md prints for this version quotes it."""
    result = json.loads(RESULT.read_text())
    with lint_realworld.DEFAULT_MANIFEST.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(row["repo"], row["commit"], row["path"], row["label"]) for row in rows]
    assert sorted((o["repo"], o["commit"], o["path"], o["label"]) for o in result["outcomes"]) == sorted(keys)
    counts = result["counts"]
    flagged = {(o["label"], o["flagged"]) for o in result["outcomes"]}
    assert counts["tp"] == sum(o["label"] == "bug" and o["flagged"] for o in result["outcomes"])
    assert counts["fp"] == sum(o["label"] == "ok" and o["flagged"] for o in result["outcomes"])
    assert flagged and counts["missing"] == 0
    docs = (ROOT / "docs" / "LINT.md").read_text()
    row = re.search(r"\| `parity lint` \(this version[^|]*\) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", docs)
    assert row and tuple(map(int, row.groups())) == (counts["tp"], counts["fp"], counts["fn"], counts["tn"])


def test_docs_state_the_manifests_size():
    """docs/LINT.md's "Real code" section counts the manifest's files, repositories and labels,
    and the cases added for issue 22 (repositories that were not in the set before)."""
    with lint_realworld.DEFAULT_MANIFEST.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    docs = (ROOT / "docs" / "LINT.md").read_text()
    size = re.search(r"lists (\d+) training files from (\d+) public repositories", docs)
    labels = re.search(r"(\d+) are buggy and (\d+) correct", docs)
    added = re.search(r"[Ii]ssue 22 added (\d+) files \((\d+) buggy\) from (\d+) repositories", docs)
    assert size and labels and added
    assert (int(size[1]), int(size[2])) == (len(rows), len({row["repo"] for row in rows}))
    bugs = sum(row["label"] == "bug" for row in rows)
    assert (int(labels[1]), int(labels[2])) == (bugs, len(rows) - bugs)
    new = rows[-int(added[1]) :]  # appended at the end, after the older set
    older_repos = {row["repo"] for row in rows[: -int(added[1])]}
    assert not {row["repo"] for row in new} & older_repos
    assert (int(added[2]), int(added[3])) == (
        sum(row["label"] == "bug" for row in new),
        len({row["repo"] for row in new}),
    )
