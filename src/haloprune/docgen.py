"""The reference pages that are generated from the code, as Markdown: the command line from the CLI's own
argument parser (:func:`cli_reference`), every config key from the typed config models with its type,
default and meaning (:func:`config_reference`). The docs site inserts them at build time
(``docs/hooks.py``), so they cannot drift from the code; ``tests/docs/test_reference.py`` checks that
they are complete.

A config key's meaning is the comment the model's source gives it: on the field's own line, and the
comment lines right above it (which also cover the fields right below, with no blank line between).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from haloprune.cli import build_parser

# ---------------------------------------------------------------------------------------------------- CLI


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's one-line help, as ``haloprune --help`` lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            names += f" `{metavar if isinstance(metavar, str) else ' '.join(metavar)}`"
        choices = f" One of: {', '.join(f'`{c}`' for c in action.choices)}." if action.choices else ""
        text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
        rows.append(f"| {names} | {text}{choices} |")
    return rows


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown for every command of ``haloprune`` and every option of each, from the parser itself."""
    parser = parser or build_parser()
    out = [f"```text\n{parser.format_usage().strip()}\n```", ""]
    helps = _helps(parser)
    commands = _subcommands(parser)
    out += ["| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#haloprune-{name}) | {helps.get(name, '')} |" for name in commands]
    out += ["", "Options of `haloprune` itself:", "", "| option | meaning |", "|---|---|"]
    out += [*_option_rows(parser), ""]
    for name, sub in commands.items():
        out += [f"## `haloprune {name}`", "", helps.get(name, ""), ""]
        out += [f"```text\n{sub.format_usage().strip()}\n```", ""]
        nested = _subcommands(sub)
        if nested:
            nested_helps = _helps(sub)
            out += ["| command | what it does |", "|---|---|"]
            out += [f"| `haloprune {name} {n}` | {nested_helps.get(n, '')} |" for n in nested]
            out.append("")
        rows = _option_rows(sub)
        if rows:
            out += ["| argument | meaning |", "|---|---|", *rows, ""]
        for n, nested_parser in nested.items():
            rows = _option_rows(nested_parser)
            if rows:
                out += [f"### `haloprune {name} {n}`", "", "| argument | meaning |", "|---|---|", *rows, ""]
    return "\n".join(out)


def cli_commands(parser: argparse.ArgumentParser | None = None) -> dict[str, list[str]]:
    """Each command (``"train"``, ``"data download"``) and its options' strings: what the reference
    must show."""
    parser = parser or build_parser()
    out: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for name, sub in _subcommands(p).items():
            key = f"{prefix} {name}".strip()
            out[key] = [s for a in sub._actions for s in a.option_strings if s not in ("-h", "--help")]
            walk(sub, key)

    walk(parser, "")
    return out


# ------------------------------------------------------------------------------------------------ configs


def _comments(cls: type) -> dict[str, str]:
    """The comment of each field in the source of ``cls``: the comment block above it (or above the fields
    right before it), then its own line's."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    group, prev_end = "", -1  # a comment block above a field also covers the fields right below it
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            prev_end = -1
            continue
        above, row = [], node.lineno - 1  # 1-based line numbers: row is the line just above
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            above.insert(0, trailing.get(row, ""))
            row -= 1
        if above:
            group = " ".join(part for part in above if part)
        elif node.lineno != prev_end + 1:
            group = ""
        prev_end = node.end_lineno or node.lineno
        own = [trailing[r] for r in range(node.lineno, prev_end + 1) if r in trailing]
        text = " ".join(part for part in [group, *own] if part)
        if text:
            out[node.target.id] = text
    return out


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            out.update(_comments(cls))
    return out


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The config models inside a field's type (``DataConfig``, ``PretrainConfig | None``, a dict of
    ``SweepMethodConfig``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _sections(arg)]


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            value = field.default_factory()
            return f"`{value!r}`"
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`".replace("'", '"') if not isinstance(value, bool) else f"`{str(value).lower()}`"


def config_keys(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every key of ``model`` (dotted, ``optim.lr``; a dict of sections as ``methods.<name>.kind``) and
    its meaning: what the reference must show."""
    comments = _field_comments(model)
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out[key] = comments.get(name, field.description or "")
        for section in _sections(field.annotation):
            sub = f"{key}.<name>." if typing.get_origin(field.annotation) is dict else f"{key}."
            out.update(config_keys(section, sub))
    return out


def config_reference(model: type[BaseModel], section: str = "") -> str:
    """Markdown tables of every key of ``model``: one table per section (``[optim]``, ``[penalty]``; the
    top-level keys first), with type, default and meaning."""
    comments = _field_comments(model)
    rows, nested = [], []
    for name, field in model.model_fields.items():
        sections = _sections(field.annotation)
        if sections:
            key = f"{section}.{name}" if section else name
            nested += [
                (f"{key}.<name>" if typing.get_origin(field.annotation) is dict else key, s) for s in sections
            ]
            continue
        meaning = comments.get(name, field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
    out = []
    if rows:
        out += [f"### `[{section}]`" if section else "### top-level keys", ""]
        doc = inspect.getdoc(model) if section else None
        if doc and doc != inspect.getdoc(BaseModel):
            out += [" ".join(doc.split("\n\n")[0].split()), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for key, sub in nested:
        out.append(config_reference(sub, key))
    return "\n".join(out)
