#!/usr/bin/env python3
"""File-to-file dependencies of libovlfs and the CLI, and which run upward.

A dependency A -> B means a function defined in A calls (or takes the address
of) a function defined in B, or A includes B's folder's private header.
Layers are ranked bottom to top by folder (LAYERS below); a dependency is
upward when B sits in a higher layer than A, and against the arrows when
ALLOWED does not let A's layer use B's (offline/ and fuse/ are siblings:
neither may use the other; offline/ may not use fs/ either). Circles are
the strongly connected components of the file graph with more than one
file.

  scripts/deps.py [--edges] [--check] [--map old=layer ...] [ROOT]

--check exits 1 if any dependency runs against the arrows or a circle
spans folders.

--map assigns a layer to a file of a tree that is not yet in folders
(used to count the "before" of issue 13): e.g. --map lib/tar.c=offline.
"""
import os
import re
import sys

# Bottom to top. A file's layer is the first path component under lib/
# (or "cli" for tools/), unless --map names it.
LAYERS = ["format", "fs", "fuse", "offline", "api", "cli"]
ALLOWED = {
    "format": set(),
    "fs": {"format"},
    "fuse": {"format", "fs"},
    "offline": {"format"},
    "api": {"format", "fs", "fuse", "offline"},
    "cli": {"api"},     # the public API only (include/ovlfs.h)
}

KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "defined",
            "__attribute__", "typeof", "__typeof__", "alignof", "_Alignof",
            "offsetof", "va_arg", "__builtin_expect"}

DEF_RE = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b([A-Za-z_]\w*)\s*\(([^;]*)$")
STATIC_DEF_RE = re.compile(r"^static\b[\w \*]*?\b([A-Za-z_]\w*)\s*\(")
IDENT_RE = re.compile(r"\b([A-Za-z_]\w*)\b")
INCLUDE_RE = re.compile(r'^#\s*include\s+"([^"]+)"')


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"),
                  text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def sources(root):
    out = []
    for top in ("lib", "tools"):
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def layer_of(path, mapping):
    if path in mapping:
        return mapping[path]
    parts = path.split("/")
    if parts[0] == "tools":
        return "cli"
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return None


def analyse(root, mapping):
    files = sources(root)
    raw = {f: open(os.path.join(root, f)).read() for f in files}
    texts = {f: strip_comments(raw[f]) for f in files}
    defined = {}          # function name -> defining .c file
    for f in files:
        if not f.endswith(".c"):
            continue
        lines = texts[f].split("\n")
        for i, line in enumerate(lines):
            m = DEF_RE.match(line)
            if not m or line.startswith(("typedef", "struct", "enum", "#")):
                continue
            # A definition: the parameter list ends in a line followed by "{".
            j = i
            while j < len(lines) and ")" not in lines[j]:
                j += 1
            nxt = "\n".join(lines[j:j + 2])
            if re.search(r"\)\s*(__attribute__\(\(.*\)\))?\s*\{", nxt) or \
                    (j + 1 < len(lines) and lines[j + 1].startswith("{")):
                defined.setdefault(m.group(1), f)
    headers = {}          # private header -> folder it belongs to
    for f in files:
        if f.endswith(".h"):
            headers[os.path.basename(f)] = f
    edges = {}
    for f in files:
        if not f.endswith(".c"):
            continue
        locals_ = set(STATIC_DEF_RE.findall(texts[f]))
        for name in set(IDENT_RE.findall(texts[f])):
            if name in KEYWORDS or name in locals_:
                continue
            g = defined.get(name)
            if g and g != f:
                edges.setdefault((f, g), set()).add(name)
    for f in files:             # headers include headers too
        for line in raw[f].split("\n"):
            m = INCLUDE_RE.match(line)
            if m and os.path.basename(m.group(1)) in headers:
                h = headers[os.path.basename(m.group(1))]
                if os.path.dirname(h) != os.path.dirname(f) and \
                        h.startswith("lib/") and f.startswith("lib/"):
                    edges.setdefault((f, h), set()).add("#include")
    return files, edges


def sccs(nodes, adj):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main(argv):
    show_edges = "--edges" in argv
    mapping = {}
    args = []
    it = iter(argv)
    for a in it:
        if a in ("--edges", "--check"):
            continue
        if a == "--map":
            k, v = next(it).split("=")
            mapping[k] = v
        else:
            args.append(a)
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..")
    files, edges = analyse(root, mapping)
    rank = {l: i for i, l in enumerate(LAYERS)}
    up, against = [], []
    for (a, b), names in sorted(edges.items()):
        la, lb = layer_of(a, mapping), layer_of(b, mapping)
        upward = bool(la and lb and rank[lb] > rank[la])
        bad = bool(la and lb and la != lb and lb not in ALLOWED[la])
        if upward:
            up.append((a, b, names))
        if bad:
            against.append((a, b, names))
        if show_edges:
            print(f"{'UP ' if upward else 'BAD' if bad else '   '}"
                  f" {a} -> {b}: {', '.join(sorted(names))}")
    adj = {}
    for (a, b) in edges:
        if not b.endswith(".h"):
            adj.setdefault(a, set()).add(b)
    circles = sccs([f for f in files if f.endswith(".c")], adj)
    print(f"{len(edges)} file-to-file dependencies, {len(up)} upward, "
          f"{len(against)} against the arrows")
    for a, b, names in against:
        print(f"  {'upward' if (a, b, names) in up else 'sideways'}: "
              f"{a} ({layer_of(a, mapping)}) -> {b} "
              f"({layer_of(b, mapping)}): {', '.join(sorted(names))}")
    for c in circles:
        print(f"  circle: {' '.join(c)}")
    unplaced = [f for f in files if f.endswith(".c") and
                not layer_of(f, mapping)]
    if unplaced:
        print(f"  not in a layer: {' '.join(unplaced)}")
    return 1 if "--check" in argv and (against or circles_across(
        circles, mapping)) else 0


def circles_across(circles, mapping):
    """Circles that span layers (a circle inside one folder is its own)."""
    return [c for c in circles if len({layer_of(f, mapping) for f in c}) > 1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
