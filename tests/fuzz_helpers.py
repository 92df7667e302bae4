"""A seeded mutator over the bundled scenarios, for the fuzz tests (tests/test_fuzz_specs.py).

Each case is a ``FuzzCase``: a label saying which mutation made it, and either YAML bytes to write
to a file or a marker asking for a directory / a missing file in place of the spec. Mutations act
on the parsed tree (wrong types, missing/unknown keys, huge/negative numbers, NaN/inf, unicode and
long names, deep junk, escaping paths) or on the text (duplicate keys, alias bombs, binary garbage,
truncation, byte flips, tags, several documents, empty files).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from helpers import REPO

SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml")) + sorted((REPO / "scenarios" / "reference").glob("*.yaml"))


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One fuzzed input: ``kind`` is "file", "dir" (a folder named like a spec) or "missing"."""

    label: str
    kind: str
    data: bytes = b""


def base_docs() -> list[tuple[str, str, dict[str, Any]]]:
    """(stem, text, parsed tree) of every bundled scenario."""
    out = []
    for p in SCENARIOS:
        text = p.read_text(encoding="utf-8")
        out.append((p.stem, text, yaml.safe_load(text)))
    return out


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into the tree (mapping keys and sequence indices), the root excluded."""
    out: list[tuple] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        # long adapter-name lists would dominate the draw; a few items represent them
        for i, v in enumerate(node[:4]):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _junk_value(rng: np.random.Generator, depth: int = 0) -> Any:
    """A value of a random kind, sometimes absurd."""
    choices = [
        "str",
        "int",
        "float",
        "bool",
        "none",
        "list",
        "dict",
        "huge",
        "neg",
        "nan",
        "inf",
        "unicode",
        "long",
        "zero",
        "tiny",
        "numstr",
    ]
    if depth > 3:
        choices = choices[:5]
    c = choices[int(rng.integers(len(choices)))]
    if c == "str":
        return "".join(rng.choice(list("abcXYZ_-. 019"), size=int(rng.integers(0, 12))))
    if c == "int":
        return int(rng.integers(-5, 100))
    if c == "float":
        return float(rng.normal(0, 10))
    if c == "bool":
        return bool(rng.integers(2))
    if c == "none":
        return None
    if c == "list":
        return [_junk_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if c == "dict":
        return {f"k{int(rng.integers(100))}": _junk_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}
    if c == "huge":
        return [10**30, 2**63, 1e308, 10**400][int(rng.integers(4))]
    if c == "neg":
        return -[1, 1.5, 10**12, 2**63][int(rng.integers(4))]
    if c == "nan":
        return math.nan
    if c == "inf":
        return [math.inf, -math.inf][int(rng.integers(2))]
    if c == "unicode":
        return "".join(rng.choice(list("αβγ🙂\u202e\u200b名前ü\t\\\"'"), size=int(rng.integers(1, 20))))
    if c == "long":
        return "a" * int(rng.choice([201, 5_000, 200_000]))
    if c == "zero":
        return 0
    if c == "tiny":
        return 1e-300
    return str(int(rng.integers(1, 64)))  # a number written as a string


def _deep_junk(rng: np.random.Generator, depth: int) -> Any:
    node: Any = "x"
    for _ in range(depth):
        node = [node] if rng.integers(2) else {"a": node}
    return node


def _mutate_tree(rng: np.random.Generator, tree: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    t = copy.deepcopy(tree)
    paths = _paths(t)
    path = paths[int(rng.integers(len(paths)))]
    parent = _get(t, path[:-1])
    key = path[-1]
    op = ["retype", "retype", "delete", "unknown", "deep", "name", "number", "number", "swap_top", "escape"][
        int(rng.integers(10))
    ]
    if op == "retype":
        parent[key] = _junk_value(rng)
    elif op == "delete":
        del parent[key]
    elif op == "unknown":
        target = parent if isinstance(parent, dict) else t
        target[f"bogus_{int(rng.integers(1000))}"] = _junk_value(rng)
    elif op == "deep":
        parent[key] = _deep_junk(rng, int(rng.choice([5, 70, 150])))
    elif op == "name":
        nm = ["", " ", "x" * 201, "a" * 100_000, "名前", "🙂", "-lead", "a b", "../x", "a\nb", "a\u0000b"][
            int(rng.integers(11))
        ]
        t["name"] = nm
        for item in t.get("adapters", []) if isinstance(t.get("adapters"), list) else []:
            if isinstance(item, dict) and rng.integers(3) == 0:
                item["group" if "group" in item else "name"] = nm
    elif op == "number":
        numeric = [p for p in paths if isinstance(_get(t, p), (int, float)) and not isinstance(_get(t, p), bool)]
        if numeric:
            p = numeric[int(rng.integers(len(numeric)))]
            v = [-1, 0, -0.0, 10**30, 2**63, 1e308, math.nan, math.inf, -math.inf, 0.5, 1e-300, 1_000_001, True][
                int(rng.integers(13))
            ]
            _get(t, p[:-1])[p[-1]] = v
        else:
            parent[key] = -1
    elif op == "swap_top":
        keys = list(t)
        k = keys[int(rng.integers(len(keys)))]
        t[k] = [t[k]] if rng.integers(2) else str(t[k])[:50]
    else:  # paths that leave the spec's folder (or do not exist)
        target = ["../../../etc/passwd", "/etc/passwd", "../README.md", "nope.csv", "/", "."][int(rng.integers(6))]
        where = int(rng.integers(3))
        wl = t.setdefault("workload", {}) if isinstance(t.get("workload", {}), dict) else {}
        if where == 0:
            wl["arrivals"] = {"kind": "trace", "path": target}
        elif where == 1:
            wl["lengths"] = {"kind": "trace", "path": target}
        else:
            t["profile"] = target
        op = f"escape:{target}"
    return f"tree:{op}:{'.'.join(map(str, path))}", t


def _dump(tree: Any) -> bytes:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False, width=10**9).encode("utf-8")


ALIAS_BOMB = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
name: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _mutate_text(rng: np.random.Generator, text: str) -> tuple[str, bytes]:
    raw = text.encode("utf-8")
    op = [
        "dup_key",
        "alias_bomb",
        "alias_small",
        "binary",
        "truncate",
        "flip",
        "tag",
        "multi_doc",
        "empty",
        "whitespace",
        "bom_crlf",
        "latin1",
        "tabs",
        "merge",
        "deep_text",
    ][int(rng.integers(15))]
    if op == "dup_key":
        lines = text.splitlines()
        tops = [ln for ln in lines if ln and not ln.startswith((" ", "#", "-"))]
        return op, (text + "\n" + tops[int(rng.integers(len(tops)))] + "\n").encode()
    if op == "alias_bomb":
        return op, ALIAS_BOMB
    if op == "alias_small":
        return op, raw + b"\nx_anchor: &x {a: 1}\nx_use: *x\n"
    if op == "binary":
        n = int(rng.integers(1, 4096))
        junk = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        return op, (junk if rng.integers(2) else raw[: len(raw) // 2] + junk)
    if op == "truncate":
        return op, raw[: int(rng.integers(0, len(raw)))]
    if op == "flip":
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(len(b)))
            b[i] = int(rng.choice(list(b":-[]{}&*!|>'\"#%@` \n\t0")))
        return op, bytes(b)
    if op == "tag":
        tag = [
            "!!python/object/apply:os.system ['echo pwned']",
            "!!python/name:os.system",
            "!custom {a: 1}",
            "!!binary aGVsbG8=",
            "!!set {a, b}",
            "!!timestamp 2001-12-14",
        ][int(rng.integers(6))]
        return op, raw + f"\nextra: {tag}\n".encode()
    if op == "multi_doc":
        return op, raw + b"\n---\n" + raw
    if op == "empty":
        return op, [b"", b"\n", b"# only a comment\n", b"~\n", b"---\n", b"[]\n", b"42\n", b"'text'\n"][
            int(rng.integers(8))
        ]
    if op == "whitespace":
        return op, b"   \n\t\n" * int(rng.integers(1, 5))
    if op == "bom_crlf":
        return op, b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n")
    if op == "latin1":
        return op, raw.replace(b"name: ", b"name: caf\xe9", 1)
    if op == "tabs":
        return op, raw.replace(b"  ", b"\t", 3)
    if op == "deep_text":  # deeper than any tree the dumper could write
        d = int(rng.choice([100, 1_000, 20_000]))
        return op, raw + b"\njunk: " + b"[" * d + b"]" * d + b"\n"
    return op, b"base: &b {duration_s: 60}\nworkload:\n  <<: *b\n" + raw


def generate(seed: int, n: int) -> list[FuzzCase]:
    """``n`` fuzz cases drawn deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    docs = base_docs()
    cases: list[FuzzCase] = [FuzzCase("dir", "dir"), FuzzCase("missing", "missing")]
    while len(cases) < n:
        stem, text, tree = docs[int(rng.integers(len(docs)))]
        r = rng.random()
        if r < 0.6:
            label, t = _mutate_tree(rng, tree)
            if rng.random() < 0.3:  # two mutations at once
                label2, t = _mutate_tree(rng, t)
                label += "+" + label2
            cases.append(FuzzCase(f"{stem}:{label}", "file", _dump(t)))
        elif r < 0.95:
            label, data = _mutate_text(rng, text)
            cases.append(FuzzCase(f"{stem}:text:{label}", "file", data))
        else:
            cases.append(FuzzCase(f"{stem}:original", "file", text.encode()))
    return cases
