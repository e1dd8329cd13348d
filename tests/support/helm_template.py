"""Render a Helm chart in Python for tests, for the small subset of Go templates our chart uses.

No `helm` binary is installable on these machines (not in Debian; the only PyPI wheel carrying the
Helm library needs Python 3.12 and exposes `lint` but not `template`). So the chart is written in a
deliberately small subset of Go's text/template plus the Sprig functions below, and this module
renders exactly that subset with Helm's semantics, refusing everything else:

- actions `{{ pipeline }}` with `{{-`/`-}}` whitespace trimming and `{{/* comments */}}`;
- `if` / `else` / `end`, `with` / `else` / `end`, `define` / `end` in files starting with `_`;
- pipelines of fields (`.Values.a.b`, `.`, `$`, `$.Values.x`), string and integer literals,
  parenthesised sub-pipelines, method `.Files.Get`;
- functions: include, toYaml, indent, nindent, quote, default, printf (%s, %d, %v), trunc,
  trimSuffix, b64enc, sha256sum, not, and, or, eq, ne.

Helm semantics kept: a missing map key reads as nil and prints as nothing (Helm replaces
"<no value>"); a field of nil is an error; Go truthiness (false, 0, nil, empty string/list/map);
`and`/`or` return an operand; `include` sets both `.` and `$`; `toYaml` drops the final newline.
Numbers in values are float64 in Helm: printing one that Go would show in exponent form (1e+06)
is refused rather than guessed. `toYaml` here is PyYAML with sorted keys, which may quote scalars
differently from Go's emitter but parses to the same data; tests compare parsed YAML, not text.
`range`, variables other than `$`, `tpl`, `lookup`, `required` and the rest raise
`UnsupportedTemplate`: a chart change that needs them needs this renderer extended first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class UnsupportedTemplate(Exception):
    """The chart uses a construct this renderer does not implement."""


class TemplateError(Exception):
    """What Helm itself would report as a rendering error."""


# ---- parsing -------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipeline: str


@dataclass
class Block:
    kind: str  # "if", "with", "define"
    arg: str
    body: list[Any] = field(default_factory=list)
    else_body: list[Any] = field(default_factory=list)


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _lex(source: str) -> list[Text | tuple[str, str]]:
    """Text pieces and ("action", content) pairs, with whitespace trimming applied."""
    out: list[Text | tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(Text(text))
        content = match.group(2).strip()
        if "{{" in content:
            raise UnsupportedTemplate(f"nested braces in action: {content!r}")
        out.append(("action", content))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    out.append(Text(tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def parse(source: str) -> list[Any]:
    root: list[Any] = []
    stack: list[tuple[Block, bool]] = []  # (block, in_else)

    def current() -> list[Any]:
        if not stack:
            return root
        block, in_else = stack[-1]
        return block.else_body if in_else else block.body

    for piece in _lex(source):
        if isinstance(piece, Text):
            if piece.text:
                current().append(piece)
            continue
        content = piece[1]
        if content.startswith("/*"):
            if not content.endswith("*/"):
                raise TemplateError(f"unterminated comment: {content!r}")
            continue
        word, _, rest = content.partition(" ")
        if word in ("if", "with", "define"):
            block = Block(word, rest.strip())
            current().append(block)
            stack.append((block, False))
        elif word == "else":
            if rest.strip():
                raise UnsupportedTemplate(f"'else {rest.strip()}' is not supported")
            if not stack or stack[-1][1] or stack[-1][0].kind == "define":
                raise TemplateError("unexpected else")
            stack[-1] = (stack[-1][0], True)
        elif word == "end":
            if not stack:
                raise TemplateError("unexpected end")
            stack.pop()
        elif word in ("range", "template", "block", "break", "continue") or (
            content.startswith("$") and ":=" in content
        ):
            raise UnsupportedTemplate(f"{content!r} is not supported")
        else:
            current().append(Action(content))
    if stack:
        raise TemplateError(f"unclosed {stack[-1][0].kind}")
    return root


# ---- pipelines -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<pipe>\|)
      | (?P<open>\()
      | (?P<close>\))
      | (?P<field>\$?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass
class _Field:
    path: str


@dataclass
class _Ident:
    name: str


@dataclass
class _Literal:
    value: Any


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise UnsupportedTemplate(f"cannot read {text[pos:]!r} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _parse_pipeline(tokens: list[tuple[str, str]], pos: int) -> tuple[list[list[Any]], int]:
    commands: list[list[Any]] = [[]]
    while pos < len(tokens):
        kind, value = tokens[pos]
        if kind == "close":
            break
        pos += 1
        if kind == "pipe":
            commands.append([])
        elif kind == "open":
            sub, pos = _parse_pipeline(tokens, pos)
            if pos >= len(tokens) or tokens[pos][0] != "close":
                raise TemplateError("unclosed parenthesis")
            pos += 1
            commands[-1].append(sub)
        elif kind == "string":
            commands[-1].append(_Literal(json.loads(value)))
        elif kind == "number":
            commands[-1].append(_Literal(float(value) if "." in value else int(value)))
        elif kind == "field":
            commands[-1].append(_Field(value))
        elif value in ("true", "false"):
            commands[-1].append(_Literal(value == "true"))
        elif value == "nil":
            commands[-1].append(_Literal(None))
        else:
            commands[-1].append(_Ident(value))
    if any(not c for c in commands):
        raise TemplateError("empty command in pipeline")
    return commands, pos


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str | list | dict | tuple):
        return len(value) > 0
    return True


def go_print(value: Any) -> str:
    """How text/template prints a value from Helm's data (numbers are float64 there)."""
    if value is None:
        return ""  # "<no value>", which Helm removes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        raise UnsupportedTemplate(
            f"Helm prints the number {value!r} as a float64 (e.g. 1e+06); quote it in values"
        )
    raise UnsupportedTemplate(f"printing a {type(value).__name__} directly; use toYaml")


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    text = yaml.safe_dump(value, sort_keys=True, default_flow_style=False)
    # PyYAML ends a bare scalar document with "...": Go's emitter does not.
    return text.rstrip("\n").removesuffix("\n...")


def _indent(n: int, text: str) -> str:
    pad = " " * int(n)
    return pad + text.replace("\n", "\n" + pad)


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return go_print(next(values))

    if re.search(r"%[^sdv%]", fmt):
        raise UnsupportedTemplate(f"printf verb in {fmt!r}")
    return re.sub(r"%[sdv%]", one, fmt)


def _and(*args: Any) -> Any:
    for arg in args:
        if not truthy(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if truthy(arg):
            return arg
    return args[-1]


def _quote(*args: Any) -> str:
    return " ".join(json.dumps(go_print(a), ensure_ascii=False) for a in args if a is not None)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "quote": _quote,
    "default": lambda default, value=None: value if truthy(value) else default,
    "printf": _printf,
    "trunc": lambda n, s: s[: int(n)] if int(n) >= 0 else s[int(n) :],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "b64enc": lambda s: base64.b64encode(go_print(s).encode()).decode(),
    "sha256sum": lambda s: hashlib.sha256(go_print(s).encode()).hexdigest(),
    "not": lambda v: not truthy(v),
    "and": _and,
    "or": _or,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
}


# ---- execution -------------------------------------------------------------------------------


class _Files:
    def __init__(self, chart: Path) -> None:
        self._chart = chart

    def Get(self, name: str) -> str:
        path = self._chart / name
        return path.read_text() if path.is_file() else ""


class Chart:
    """A chart directory rendered with given values, as `helm template` would."""

    def __init__(self, path: Path, release: str = "gw", namespace: str = "default") -> None:
        self.path = path
        meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.meta = {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta.get("appVersion", ""),
        }
        self.release = {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "IsInstall": True,
            "IsUpgrade": False,
        }
        self.default_values: dict[str, Any] = yaml.safe_load((path / "values.yaml").read_text())
        self.defines: dict[str, list[Any]] = {}
        self.templates: dict[str, list[Any]] = {}
        for file in sorted((path / "templates").iterdir()):
            if not file.is_file():
                continue
            nodes = parse(file.read_text())
            self._collect_defines(nodes, file.name)
            if not file.name.startswith("_") and file.suffix in (".yaml", ".yml"):
                self.templates[file.name] = nodes

    def _collect_defines(self, nodes: list[Any], file: str) -> None:
        for node in nodes:
            if isinstance(node, Block) and node.kind == "define":
                name = json.loads(node.arg)
                if name in self.defines:
                    raise TemplateError(f"{file}: template {name!r} defined twice")
                self.defines[name] = node.body
            elif isinstance(node, Block):
                self._collect_defines(node.body + node.else_body, file)

    def render(self, overrides: dict[str, Any] | None = None) -> dict[str, str]:
        values = merge(self.default_values, overrides or {})
        root = {
            "Values": values,
            "Release": self.release,
            "Chart": self.meta,
            "Files": _Files(self.path),
        }
        out = {}
        for name, nodes in self.templates.items():
            try:
                out[name] = self._run(nodes, root, root)
            except (TemplateError, UnsupportedTemplate) as exc:
                raise type(exc)(f"{name}: {exc}") from None
        return out

    def manifests(self, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every Kubernetes object the chart renders, parsed."""
        docs = []
        for name, text in self.render(overrides).items():
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    if not isinstance(doc, dict):
                        raise TemplateError(f"{name}: a document is not a mapping")
                    docs.append(doc)
        return docs

    def _run(self, nodes: list[Any], dot: Any, root: Any) -> str:
        out = []
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                out.append(go_print(self._eval(node.pipeline, dot, root)))
            elif node.kind == "define":
                continue
            else:
                value = self._eval(node.arg, dot, root)
                if truthy(value):
                    out.append(self._run(node.body, value if node.kind == "with" else dot, root))
                else:
                    out.append(self._run(node.else_body, dot, root))
        return "".join(out)

    def _eval(self, text: str, dot: Any, root: Any) -> Any:
        tokens = _tokens(text)
        commands, pos = _parse_pipeline(tokens, 0)
        if pos != len(tokens):
            raise TemplateError(f"unexpected ')' in {text!r}")
        return self._pipeline(commands, dot, root)

    def _pipeline(self, commands: list[list[Any]], dot: Any, root: Any) -> Any:
        value: Any = _NOTHING
        for command in commands:
            value = self._command(command, dot, root, value)
        return value

    def _operand(self, operand: Any, dot: Any, root: Any) -> Any:
        if isinstance(operand, _Literal):
            return operand.value
        if isinstance(operand, _Field):
            return self._field(operand.path, dot, root)
        if isinstance(operand, list):
            return self._pipeline(operand, dot, root)
        raise TemplateError(f"function {operand.name!r} used as a value")

    def _command(self, command: list[Any], dot: Any, root: Any, piped: Any) -> Any:
        head, *rest = command
        args = [self._operand(a, dot, root) for a in rest]
        if piped is not _NOTHING:
            args.append(piped)
        if isinstance(head, _Ident):
            if head.name == "include":
                name, data = args
                if name not in self.defines:
                    raise TemplateError(f"no template {name!r}")
                return self._run(self.defines[name], data, data)
            function = FUNCTIONS.get(head.name)
            if function is None:
                raise UnsupportedTemplate(f"function {head.name!r}")
            return function(*args)
        value = self._operand(head, dot, root)
        if callable(value):
            return value(*args)
        if args:
            raise TemplateError("can't give arguments to a non-function")
        return value

    def _field(self, path: str, dot: Any, root: Any) -> Any:
        if path.startswith("$"):
            value, path = root, path[1:]
        else:
            value = dot
        if path in ("", "."):
            return value
        for name in path.strip(".").split("."):
            if value is None:
                raise TemplateError(f"nil pointer evaluating interface {{}}.{name}")
            if isinstance(value, dict):
                value = value.get(name)
            elif hasattr(value, name):
                value = getattr(value, name)
            else:
                raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")
        return value


_NOTHING = object()


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge recursively, anything else replaces; None deletes."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
