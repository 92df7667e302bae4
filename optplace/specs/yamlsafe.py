"""Safe YAML reading that remembers where every value came from.

The document is composed with PyYAML's *safe* composer, then turned into plain Python data by our
own walk, which (1) records the line of every mapping key and sequence item, keyed by its path,
(2) rejects duplicate keys, and (3) bounds the number of nodes built, so an alias bomb ("billion
laughs") fails fast instead of exhausting memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from optplace.specs.errors import SpecIssue

MAX_NODES = 2_000_000
MAX_ALIAS_NODES = 100_000  # values reached again through aliases; real specs need few
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Located:
    """Plain data read from YAML plus the 1-based line of each path in it."""

    data: Any
    lines: dict[Path_, int]

    def line_of(self, path: Path_) -> int | None:
        """The line of the longest prefix of ``path`` that the document has."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.count = 0
        self.alias_count = 0
        self.seen: set[int] = set()
        self.lines: dict[Path_, int] = {}

    def fail(self, node: yaml.Node | None, path: Path_, msg: str) -> SpecIssue:
        line = node.start_mark.line + 1 if node is not None else None
        return SpecIssue(self.file, line, dotted(path), msg)

    def build(self, node: yaml.Node, path: Path_, depth: int, aliased: bool = False) -> Any:
        self.count += 1
        if not aliased and id(node) in self.seen:
            aliased = True
        self.seen.add(id(node))
        if aliased:
            self.alias_count += 1
            if self.alias_count > MAX_ALIAS_NODES:
                raise _Abort(
                    self.fail(
                        node,
                        (),
                        f"aliases expand to more than {MAX_ALIAS_NODES:,} values (alias bomb?); refusing to load",
                    )
                )
        if self.count > MAX_NODES:
            raise _Abort(
                self.fail(
                    node,
                    (),
                    f"document expands to more than {MAX_NODES:,} values (alias/anchor expansion?); refusing to load",
                )
            )
        if depth > MAX_DEPTH:
            raise _Abort(self.fail(node, path, f"nesting deeper than {MAX_DEPTH} levels"))
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return _SCALARS.construct_object(node, deep=True)
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) and node.tag not in _PLAIN_TAGS:
            raise _Abort(self.fail(node, path, f"invalid YAML: tag {node.tag!r} is not allowed"))
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1, aliased) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    raise _Abort(self.fail(knode, path, "YAML merge keys ('<<') are not supported"))
                if not isinstance(knode, yaml.ScalarNode):
                    raise _Abort(self.fail(knode, path, "mapping keys must be plain scalars"))
                key = _SCALARS.construct_object(knode, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise _Abort(self.fail(knode, path, f"unsupported mapping key {key!r}"))
                key = str(key)
                if key in out:
                    raise _Abort(self.fail(knode, path + (key,), "duplicate key"))
                self.lines[path + (key,)] = knode.start_mark.line + 1
                out[key] = self.build(vnode, path + (key,), depth + 1, aliased)
            return out
        raise _Abort(self.fail(node, path, "unsupported YAML node"))


class _Abort(Exception):
    def __init__(self, issue: SpecIssue):
        self.issue = issue


_PLAIN_TAGS = {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used (safe tags only)


def dotted(path: Path_) -> str:
    """``("adapters", 3, "rank")`` → ``adapters[3].rank``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def read_yaml(path: str | Path) -> Located:
    """Read one YAML document safely. Raises ``SpecIssueError`` with a located issue on any failure."""
    p = Path(path)
    name = str(path)
    try:
        if p.is_dir():
            raise _Abort(SpecIssue(name, None, "", "is a directory, not a spec file"))
        raw = p.read_bytes()[: MAX_BYTES + 1]
    except _Abort as e:
        raise SpecIssueError(e.issue) from None
    except OSError as e:
        raise SpecIssueError(SpecIssue(name, None, "", f"cannot read: {e.strerror or e}")) from None
    if len(raw) > MAX_BYTES:
        raise SpecIssueError(SpecIssue(name, None, "", f"file larger than {MAX_BYTES // 2**20} MiB"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecIssueError(SpecIssue(name, None, "", f"not UTF-8 text (byte {e.start})")) from None
    if "\x00" in text:
        raise SpecIssueError(SpecIssue(name, None, "", "binary data (NUL byte) in a YAML file"))
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str = "<string>") -> Located:
    """Parse YAML text (see ``read_yaml``)."""
    try:
        nodes = _compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecIssueError(SpecIssue(name, line, "", f"invalid YAML: {msg}")) from None
    except yaml.YAMLError as e:
        raise SpecIssueError(SpecIssue(name, None, "", f"invalid YAML: {e}")) from None
    except RecursionError:
        raise SpecIssueError(SpecIssue(name, None, "", "invalid YAML: nested too deeply")) from None
    if not nodes or nodes[0] is None:
        raise SpecIssueError(SpecIssue(name, 1, "", "empty spec: expected a mapping of top-level keys"))
    if len(nodes) > 1:
        raise SpecIssueError(
            SpecIssue(name, nodes[1].start_mark.line + 1, "", "several YAML documents in one file; expected one")
        )
    b = _Builder(name)
    try:
        data = b.build(nodes[0], (), 0)
    except _Abort as e:
        raise SpecIssueError(e.issue) from None
    except (yaml.YAMLError, ValueError, OverflowError) as e:
        raise SpecIssueError(SpecIssue(name, None, "", f"invalid YAML value: {e}")) from None
    if not isinstance(data, dict):
        raise SpecIssueError(SpecIssue(name, 1, "", f"expected a mapping of top-level keys, got {type(data).__name__}"))
    return Located(data, b.lines)


def _compose(text: str) -> list[Any]:
    """Every document's node tree. libyaml's composer (when PyYAML was built with it) reads a
    10,000-adapter spec ~4x faster than the pure-Python one and gives the same nodes and lines; a
    document it rejects is composed again by the pure-Python one, so an error reads the same
    whichever is installed."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return list(yaml.compose_all(text, Loader=fast))
        except yaml.YAMLError:
            pass
    return list(yaml.compose_all(text, Loader=yaml.SafeLoader))


class SpecIssueError(Exception):
    """A single located issue raised while reading YAML."""

    def __init__(self, issue: SpecIssue):
        self.issue = issue
        super().__init__(issue.format())
