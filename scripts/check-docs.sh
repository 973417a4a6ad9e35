#!/usr/bin/env bash
# Checks the documentation: README.md stays a front door (at most 8 KB), and
# every relative link in README.md, BENCHMARKS.md and docs/*.md leads to a
# file that exists and, when it names a section (#anchor), to a heading
# with that anchor (GitHub's rule: lower case, punctuation dropped, spaces
# to hyphens).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys

def anchors(path):
    found = set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        title = re.sub(r"[^\w\- ]", "", title)
        found.add(title.replace(" ", "-"))
    return found

problems = []
size = os.path.getsize("README.md")
if size > 8192:
    problems.append(f"README.md is {size} bytes; the front door stays under 8 KB (move details to docs/)")
pages = ["README.md", "BENCHMARKS.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir("docs") if name.endswith(".md"))
for page in pages:
    text = open(page, encoding="utf-8").read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no internet in CI)
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            problems.append(f"{page}: link to {target}: {resolved} does not exist")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            problems.append(f"{page}: link to {target}: no heading #{anchor} in {resolved}")
for problem in problems:
    print(problem, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"docs: README.md {size} bytes, links of {len(pages)} pages checked")
PY
