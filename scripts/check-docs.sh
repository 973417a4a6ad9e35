#!/usr/bin/env bash
# Checks the documentation: README.md stays a front door (at most 8 KB), and
# every relative link in README.md, BENCHMARKS.md and docs/*.md leads to a
# file that exists and, when it names a section (#anchor), to a heading
# with that anchor (GitHub's rule: lower case, punctuation dropped, spaces
# to hyphens). And that no command shown can rot unseen: every ```sh and
# ```sql block in README.md and docs/ follows a marker line saying how it is
# checked:
#   <!-- ci: NAME -->           scripts/test.sh runs it (scripts/doc-block.sh run NAME)
#   <!-- same as: NAME -->      it is the block marked ci: NAME, word for word
#   <!-- tested by: FILE... --> each of its commands or statements appears, word
#                               for word (spacing aside), in one of these files
#                               that CI runs
#   <!-- read by: FILE -->      a test reads this page and checks or runs the block
#   <!-- not run: REASON -->    CI cannot run it (listed at the end)
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
MARKER = re.compile(r"<!-- (ci|same as|tested by|read by|not run): (.+?) -->$")
CI_SCRIPT = open("scripts/test.sh", encoding="utf-8").read()

def squeeze(text):
    return " ".join(text.split())

def commands(language, block):
    """The block's commands (sh: lines, continuations joined) or statements
    (sql: up to each ;), without comments, spacing squeezed."""
    if language == "sh":
        joined = block.replace("\\\n", " ")
        lines = (squeeze(re.sub(r"(^|\s)#.*", "", line)) for line in joined.splitlines())
        return [line for line in lines if line]
    text = re.sub(r"--.*", "", block)
    return [squeeze(part) + ";" for part in text.split(";") if squeeze(part)]

blocks, unrun = [], []
for page in ["README.md"] + [p for p in pages if p.startswith("docs")]:
    lines = open(page, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"```(\w*)$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("sh", "sql"):
            marker = MARKER.match(lines[i - 1]) if i else None
            blocks.append((page, i + 1, fence.group(1), marker, "\n".join(lines[i + 1:end])))
        i = end + 1

named = {}
for page, line, language, marker, block in blocks:
    if marker and marker.group(1) == "ci":
        if marker.group(2) in named:
            problems.append(f"{page}:{line}: a second block marked ci: {marker.group(2)}")
        named[marker.group(2)] = block
for page, line, language, marker, block in blocks:
    where = f"{page}:{line}"
    if not marker:
        problems.append(f"{where}: a ```{language} block without a marker saying what runs or tests it")
        continue
    kind, value = marker.groups()
    if kind == "ci" and f"doc-block.sh run {value}" not in CI_SCRIPT:
        problems.append(f"{where}: marked ci: {value}, but scripts/test.sh never runs doc-block.sh run {value}")
    elif kind == "same as" and commands(language, named.get(value, "")) != commands(language, block):
        problems.append(f"{where}: not the same as the block marked ci: {value}")
    elif kind == "tested by":
        files = value.split()
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            problems.append(f"{where}: tested by {missing}, which do not exist")
            continue
        text = " ".join(squeeze(open(f, encoding="utf-8").read()) for f in files)
        for command in commands(language, block):
            if command not in text:
                problems.append(f"{where}: `{command}` appears in none of {files}")
    elif kind == "read by":
        if not os.path.isfile(value) or page not in open(value, encoding="utf-8").read():
            problems.append(f"{where}: read by {value}, which does not read {page}")
    elif kind == "not run":
        unrun.append(f"{where}: {value}")

for problem in problems:
    print(problem, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"docs: README.md {size} bytes, links of {len(pages)} pages and {len(blocks)} command blocks checked")
for block in unrun:
    print(f"docs: not run by CI: {block}")
PY
