"""Citations stay inside the repository: a reader with only this repo and the paper can follow every one.

- No tracked file cites a Markdown document that is not in the repository, an issue number, or a tracker file.
- Every `docs/method.md §N.M` / `docs/method.md Dk` and every bare `§N.M` in a .py file names a heading, numbered
  item or table row that exists in docs/method.md.
- Every `file.py:name` that docs/method.md (or the README) names for a repository file is defined there.

Run: pytest -q tests/test_docs.py
"""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = os.path.join(ROOT, "docs", "method.md")


def tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):   # not a git checkout: every file under the root
        out = [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) if "/." not in d + "/"
               for f in fs]
    return [f for f in out if f.endswith((".py", ".md", ".txt", ".sh")) or f == ".ci/run"]


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def method_anchors():
    """Section numbers (headings '## 4.' / '### 4.3', numbered list items inside a section -> '13.14.12') and
    D-rows ('| D7 |') of docs/method.md."""
    secs, ds, current = set(), set(), None
    for line in read("docs/method.md").splitlines():
        m = re.match(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if m:
            current = m.group(1)
            secs.add(current)
            continue
        m = re.match(r"^(\d+)\.\s", line)
        if m and current:
            secs.add(f"{current}.{m.group(1)}")
        m = re.match(r"^\|\s*(D\d+)\s*\|", line)
        if m:
            ds.add(m.group(1))
    return secs, ds


def test_no_citation_of_documents_outside_the_repo():
    bad = []
    tracked_md = {os.path.basename(f) for f in tracked_text_files() if f.endswith(".md")}
    for rel in tracked_text_files():
        text = read(rel)
        for m in re.finditer(r"[\w./-]*[\w-]\.md\b", text):
            name = m.group(0)
            if name.startswith(("http", "//")) or "://" in text[max(0, m.start() - 80):m.start()].split()[-1:][0:1]:
                continue
            here = os.path.dirname(os.path.join(ROOT, rel))
            if not (any(os.path.isfile(p) for p in (os.path.join(ROOT, name), os.path.join(here, name)))
                    or os.path.basename(name) in tracked_md):          # e.g. results.md under docs/toy_repro5/
                bad.append(f"{rel}: cites {name!r}, which is not in the repository")
        for m in re.finditer(r"\bCONTRACT\b|(?i:\bissue #?\d+\b|\.\./shared\b|\bshared/spec\b)", text):
            bad.append(f"{rel}: cites {m.group(0)!r} (outside the repository)")
    assert not bad, "\n".join(bad)


def test_method_md_sections_cited_by_the_code_exist():
    secs, ds = method_anchors()
    assert {"4.3", "5.2", "12.2", "13.14.12"} <= secs and {"D1", "D15"} <= ds   # the parser reads the file
    bad = []
    for rel in tracked_text_files():
        text = read(rel)
        for m in re.finditer(r"docs/method\.md\s*(D\d+)", text):
            if m.group(1) not in ds:
                bad.append(f"{rel}: docs/method.md {m.group(1)} has no row in docs/method.md")
        if not rel.endswith(".py"):
            continue
        for m in re.finditer(r"§\s?(\d+(?:\.\d+)*)(?:\s*-\s*(\d+(?:\.\d+)*))?", text):
            for num in filter(None, m.groups()):
                if num not in secs:
                    line = text.count("\n", 0, m.start()) + 1
                    bad.append(f"{rel}:{line}: §{num} is not a section of docs/method.md")
    assert not bad, "\n".join(bad)


def repo_names(rel):
    """Top-level functions/classes and Class.method names defined in a repository .py file."""
    tree = ast.parse(read(rel))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("doc", ["docs/method.md", "README.md"])
def test_functions_named_in_the_docs_exist(doc):
    text = read(doc)
    bad, checked = [], 0
    for m in re.finditer(r"(?<![\w/.-])([a-z_]+\.py):([A-Za-z_][\w.]*)", text):
        rel, name = m.groups()
        if not os.path.isfile(os.path.join(ROOT, rel)):
            continue                                   # an upstream file (cited with lines elsewhere)
        checked += 1
        if name not in repo_names(rel):
            bad.append(f"{doc} names {rel}:{name}, which {rel} does not define")
    assert not bad, "\n".join(bad)
    if doc == "docs/method.md":
        assert checked >= 20                           # every equation names its implementation
