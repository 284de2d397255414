"""Tool contracts at build time: lock files (``registry/<server>.tools.json``, written by ``gwc pin``)
checked for their form and for schemas every node can compile, held against their manifests, and
policy conditions held against the pinned input schemas.

A node serves the pinned definitions, refuses arguments that break the pinned input schema before
policy sees them, and refuses the whole bundle when a schema does not compile: what would go wrong
there is said here, at the file and line to fix.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gwc.compiler.build.diagnostics import Diagnostic
from gwc.compiler.build.entries import RuleEntry, ServerEntry
from gwc.compiler.build.locks import LOCK_SUFFIX
from gwc.compiler.build.models import (
    ConditionOps,
    GatewayConfig,
    ToolContractSettings,
    ToolDefinition,
    ToolLock,
)
from gwc.compiler.build.schema_errors import validate
from gwc.compiler.build.sources import Loc, SourceFile
from gwc.runtime.bundle.tool_definitions import input_validator

Definitions = dict[str, dict[str, Any]]  # tool name -> pinned definition, as written
Test = Callable[[dict[str, Any]], bool]

# The dialects a pinned schema may name in $schema (without one it is 2020-12, MCP's default); any
# other is refused before the meta-schema check, which would otherwise try to download it.
DIALECTS = {"https://json-schema.org/draft/2020-12/schema": "JSON Schema 2020-12",
            "http://json-schema.org/draft-07/schema": "JSON Schema draft-07"}
_SCHEMA_FIELDS = ("inputSchema", "outputSchema")
_COMBINATORS = ("allOf", "anyOf", "oneOf")
_DATA_KEYWORDS = ("const", "default", "enum", "examples")  # values, not schemas: no $ref in them
_NOT_SHOWN = ("description", "title", "examples", "default", "$comment")  # left out of messages
_UNKNOWN = object()  # a $ref this check cannot follow (an anchor, say): it decides nothing
_NUMBERS = frozenset({"number", "integer"})
# what the other operators compare: a node judges pattern on strings only, min and max on numbers
_OPERAND_KINDS = {"pattern": ("strings", frozenset({"string"})), "min": ("numbers", _NUMBERS),
                  "max": ("numbers", _NUMBERS)}


# --- one lock file ----------------------------------------------------------------------------------

def read_lock(source: SourceFile) -> tuple[Definitions | None, list[Diagnostic]]:
    """The definitions of a lock that pass every check (the others are reported, and their
    conditions not checked), and what is wrong in it; None when the file is no lock at all."""
    if not isinstance(source.data, dict):
        return None, [source.diag((), "schema", "a lock file is an object with 'server' and 'tools', "
                                                "as `gwc pin` writes it")]
    lock, diags = validate(source, ToolLock, source.data)
    if lock is None:
        return None, diags
    pins = {}
    for name, definition in lock.tools.items():
        loc = ("tools", name)
        if not isinstance(definition, dict):
            diags.append(source.diag(loc, "schema", f"the definition of tool '{name}' is not an object"))
            continue
        checked, errors = validate(source, ToolDefinition, definition, loc)
        if checked is not None:
            errors = [d for field in _SCHEMA_FIELDS if field in definition
                      for d in _check_schema(source, (*loc, field), definition[field], field)]
        diags += errors
        if not errors:
            pins[name] = definition
    return pins, diags


def _check_schema(source: SourceFile, loc: Loc, schema: dict[str, Any], field: str) -> list[Diagnostic]:
    """An object schema (MCP requires it) of a supported dialect, valid against its meta-schema,
    referring only inside itself; an inputSchema also compiles as nodes compile it."""
    diags = []
    if schema.get("type") != "object":
        diags.append(source.diag((*loc, "type"), "tool-schema",
                                 f"{field} must have type \"object\" at its root (MCP requires it): "
                                 "the upstream's tool is not valid MCP; fix it there and run "
                                 "`gwc pin` again"))
    dialect = schema.get("$schema")
    if dialect is not None and (not isinstance(dialect, str) or dialect.rstrip("#") not in DIALECTS):
        return [*diags, source.diag((*loc, "$schema"), "tool-schema",
                                    f"{field} uses $schema {json.dumps(dialect)}: only "
                                    f"{' and '.join(f'{v} ({k})' for k, v in DIALECTS.items())} are "
                                    "supported (no $schema means 2020-12)")]
    remote = [source.diag(loc + ref_loc, "remote-ref",
                          f"{field} refers to {ref!r} outside itself: nodes never fetch schemas, so "
                          "a pinned schema may only use references inside it (\"#/$defs/...\")")
              for ref_loc, ref in _references(schema) if not ref.startswith("#")]
    if remote:
        return diags + remote
    name = DIALECTS["https://json-schema.org/draft/2020-12/schema" if dialect is None
                    else dialect.rstrip("#")]
    import jsonschema_rs  # here: a registry without locks (and gwc's start) never pays its import

    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        return [*diags, source.diag(loc + tuple(exc.instance_path), "tool-schema",
                                    f"{field} is not valid {name}: {exc.message}")]
    if field == "inputSchema":
        try:
            input_validator(schema)
        except ValueError as exc:
            diags.append(source.diag(loc, "tool-schema", f"nodes cannot compile this {field}, and "
                                                         f"would refuse the bundle: "
                                                         f"{str(exc).splitlines()[0]}"))
    return diags


def _references(schema: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """(where, value) of every $ref and $dynamicRef, not looking inside values such as enum."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield (*loc, key), value
            elif key not in _DATA_KEYWORDS:
                yield from _references(value, (*loc, key))
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _references(value, (*loc, i))


# --- locks against manifests ------------------------------------------------------------------------

def attach_locks(locks: list[tuple[SourceFile, Definitions]],
                 servers: dict[str, ServerEntry]) -> list[Diagnostic]:
    """Give each server its lock, found by file name; a lock for no server, or one whose server
    field disagrees with its name, is an error."""
    diags = []
    for source, pins in locks:
        named = Path(source.rel).name.removesuffix(LOCK_SUFFIX)
        server = source.data["server"]
        if server != named:
            diags.append(source.diag(("server",), "lock-server",
                                     f"this lock is for server '{server}' but its file is named after "
                                     f"'{named}': `gwc pin {server}` writes registry/{server}"
                                     f"{LOCK_SUFFIX}; move it there"))
        elif server not in servers:
            diags.append(source.diag(("server",), "lock-server",
                                     f"no server '{server}' in registry/ for this lock: delete "
                                     f"it, or add the manifest of '{server}' (a manifest with "
                                     "errors counts as missing: fix it first)"))
        else:
            servers[server].lock, servers[server].pins = source, pins
    return diags


def check_pins(entry: ServerEntry, contracts: ToolContractSettings) -> list[Diagnostic]:
    """The lock pins only declared tools, and pins all of them when the server requires it (a
    definition with errors of its own counts as pinned here)."""
    manifest, lock, diags = entry.manifest, entry.lock, []
    name = manifest.name
    pinned = lock.data["tools"] if lock is not None else {}
    if lock is not None:
        diags += [lock.diag(("tools", tool), "undeclared-pin",
                            f"tool '{tool}' is pinned but server '{name}' does not declare it "
                            f"({entry.source.rel}): run `gwc pin {name}` again or declare it", key=True)
                  for tool in pinned if tool not in manifest.tools]
    if (manifest.pin or contracts.pin) == "required":
        origin = "pin: required in its manifest" if manifest.pin else \
            "gateway.yaml tool_contracts.pin: required"
        diags += [entry.source.diag(("tools", tool), "not-pinned",
                                    f"tool '{tool}' is not pinned and server '{name}' requires pins "
                                    f"({origin}): run `gwc pin {name}` and commit registry/{name}"
                                    f"{LOCK_SUFFIX}", key=True)
                  for tool in manifest.tools if tool not in pinned]
    return diags


# --- policy conditions against pinned input schemas ------------------------------------------------

def _target(root: Any, ref: str) -> Any:
    """What a local reference (``#/$defs/x``, a JSON Pointer in a URI fragment) points at in
    ``root``; _UNKNOWN for anything else."""
    if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
        return _UNKNOWN
    node = root
    for part in unquote(ref[2:]).split("/") if len(ref) > 1 else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _UNKNOWN
    return node


def _branches(schemas: Iterable[Any], root: Any) -> Iterator[dict[str, Any] | None]:
    """Each schema and every subschema that applies with it or instead of it ($ref, allOf, anyOf,
    oneOf), each once; None for a reference that cannot be followed."""
    stack, seen = list(schemas), set()
    while stack:
        schema = stack.pop()
        if not isinstance(schema, dict) or id(schema) in seen:
            continue
        seen.add(id(schema))
        yield schema
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = _target(root, ref)
            if target is _UNKNOWN:
                yield None
            else:
                stack.append(target)
        for key in _COMBINATORS:
            if isinstance(subs := schema.get(key), list):
                stack.extend(subs)


def _property(schema: dict[str, Any], name: str) -> list[Any]:
    """The schemas an object schema gives its member ``name``: its property, else the patterns
    that match the name, else additionalProperties when that is a schema."""
    properties = schema.get("properties")
    if isinstance(properties, dict) and name in properties:
        return [properties[name]]
    patterns = schema.get("patternProperties")
    found = [sub for pattern, sub in patterns.items() if _matches(pattern, name)] \
        if isinstance(patterns, dict) else []
    extra = schema.get("additionalProperties")
    return found or ([extra] if isinstance(extra, dict) else [])


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # an ECMA-only pattern: it may match


def _argument(root: dict[str, Any], path: list[str]) -> list[Any] | None:
    """The schemas the argument at ``path`` may have: a condition's path reads through objects
    only (``gwc.runtime.policy.decide.argument_at``). Empty: not declared; None: cannot tell."""
    current: list[Any] = [root]
    for part in path:
        found, unknown = [], False
        for branch in _branches(current, root):
            if branch is None:
                unknown = True
            else:
                found += _property(branch, part)
        if not found:
            return None if unknown else []
        current = found
    return current


def _kinds(value: Any) -> frozenset[str]:
    """The JSON Schema types a JSON value is an instance of (``true`` is no number, ``1.0`` is an
    integer)."""
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, (int, float)):
        return _NUMBERS if isinstance(value, int) or value.is_integer() else frozenset({"number"})
    if isinstance(value, str):
        return frozenset({"string"})
    return frozenset({"null"} if value is None else {"array"} if isinstance(value, list) else {"object"})


def _test(kinds: frozenset[str], match: Callable[[Any], bool]) -> Test:
    """A check of one schema node on its own: its type allows one of ``kinds``, and its enum and
    const (when it has them) hold an option that ``match`` accepts."""
    def test(node: dict[str, Any]) -> bool:
        declared = node.get("type")
        types = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else None
        enum = node.get("enum")
        return ((types is None or not kinds.isdisjoint(types))
                and (not isinstance(enum, list) or any(match(option) for option in enum))
                and ("const" not in node or match(node["const"])))
    return test


def _value_test(value: Any) -> Test:
    return _test(_kinds(value), lambda option: _same(option, value))


def _kind_test(kinds: frozenset[str]) -> Test:
    return _test(kinds, lambda option: not kinds.isdisjoint(_kinds(option)))


def _admits(schema: Any, root: Any, test: Test, seen: frozenset[int] = frozenset()) -> bool:
    """Whether ``schema`` can hold for a scalar that passes ``test`` at each node: $ref and allOf
    must all hold, anyOf and oneOf one of theirs (lenient: what cannot be followed admits)."""
    if not isinstance(schema, dict):
        return schema is not False
    if id(schema) in seen:
        return True
    seen = seen | {id(schema)}
    if not test(schema):
        return False
    ref = schema.get("$ref")
    if isinstance(ref, str) and not _admits(_target(root, ref), root, test, seen):
        return False
    if isinstance(every := schema.get("allOf"), list) and not all(
            _admits(sub, root, test, seen) for sub in every):
        return False
    return all(any(_admits(sub, root, test, seen) for sub in subs)
               for key in ("anyOf", "oneOf") if isinstance(subs := schema.get(key), list) and subs)


def _items(schemas: list[Any], root: Any) -> Iterator[Any]:
    """The element schemas of the array forms of ``schemas``: a list argument is judged element
    by element at the node."""
    for branch in _branches(schemas, root):
        items = branch.get("items") if branch is not None else None
        yield from items if isinstance(items, list) else () if items is None else (items,)
        if branch is not None and isinstance(prefix := branch.get("prefixItems"), list):
            yield from prefix


def _accepts(schemas: list[Any], root: Any, test: Test) -> bool:
    return any(_admits(schema, root, test) for schema in [*schemas, *_items(schemas, root)])


def _shown(schemas: list[Any], root: Any) -> str:
    """The argument's schema, short, for a message (a bare $ref shown as what it points at)."""
    schema, seen = schemas[0], set()
    while isinstance(schema, dict) and isinstance(ref := schema.get("$ref"), str) and len(schema) == 1 \
            and isinstance(target := _target(root, ref), dict) and id(target) not in seen:
        seen.add(id(target))
        schema = target
    if isinstance(schema, dict):
        schema = {k: v for k, v in schema.items() if k not in _NOT_SHOWN}
    text = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    return f" (its schema: {text if len(text) <= 100 else text[:99] + '…'})"


def _misfits(ops: ConditionOps, schemas: list[Any], root: Any, lock: str) -> Iterator[tuple[Loc, str, str]]:
    """(where in the condition, what, why) for each operator the argument's schema rules out."""
    for op, values in (("in", ops.in_), ("not_in", ops.not_in)):
        for i, value in enumerate(values or ()):
            if not _accepts(schemas, root, _value_test(value)):
                yield ((op, i), f"{op} value {json.dumps(value)} never matches",
                       f"the pinned input schema ({lock}) does not allow it{_shown(schemas, root)}")
    for op, (what, kinds) in _OPERAND_KINDS.items():
        if getattr(ops, op) is not None and not _accepts(schemas, root, _kind_test(kinds)):
            yield ((op,), f"{op} never applies to",
                   f"the pinned input schema ({lock}) allows no {what}{_shown(schemas, root)}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    return not _kinds(a).isdisjoint(_kinds(b)) and a == b


def _tools(names: list[str]) -> str:
    return ("tool " if len(names) == 1 else "tools ") + ", ".join(f"'{n}'" for n in names)


def _applies_to(entry: RuleEntry, target: ServerEntry) -> list[str]:
    """The pinned tools a rule applies to: those it names, else all the server declares, of an
    access class in its action."""
    rule, tools = entry.rule, target.manifest.tools
    named = rule.resource.tool if rule.resource.tool is not None else tools
    return sorted({name for name in named if name in target.pins and name in tools
                   and tools[name].access in rule.actions})


def _check_argument(entry: RuleEntry, target: ServerEntry, tools: list[str], arg: str,
                    ops: ConditionOps) -> list[Diagnostic]:
    path = arg.split(".")
    if not all(path):
        return []  # not an argument path: the rule check says so
    lock = target.lock.rel if target.lock is not None else ""
    undeclared: list[str] = []
    misfits: dict[tuple[Loc, str, str], list[str]] = defaultdict(list)
    for tool in tools:
        root = target.pins[tool]["inputSchema"]
        schemas = _argument(root, path)
        if schemas == []:
            undeclared.append(tool)
        elif schemas is not None:
            for where, what, why in _misfits(ops, schemas, root, lock):
                misfits[(where, what, why)].append(tool)
    loc = (entry.index, "conditions", arg)
    diags = [entry.source.diag(loc + where, "argument-type",
                               f"{what} argument '{arg}' of {_tools(names)}: {why}")
             for (where, what, why), names in misfits.items()]
    if undeclared:
        diags.append(_undeclared(entry, loc, arg, undeclared, target.manifest.name, lock))
    return diags


def _undeclared(entry: RuleEntry, loc: Loc, arg: str, tools: list[str], server: str,
                lock: str) -> Diagnostic:
    """An error when the rule names the tools, a warning when it covers the whole server (the
    condition may well be meant for its other tools)."""
    head = f"argument '{arg}' is not in the pinned input schema of {_tools(tools)} ({lock})"
    those = "that tool" if len(tools) == 1 else "those tools"
    if entry.rule.resource.tool is not None:
        return entry.source.diag(loc, "unknown-argument",
                                 f"{head}: the condition never holds for {those}; fix the argument "
                                 f"path, or run `gwc pin {server}` if the tool changed", key=True)
    if entry.rule.effect == "allow":
        effect = f"the condition never holds for {those}, so this rule never grants {those}"
    else:
        effect = (f"calls of {those} never have it, and a deny rule counts a missing argument as a "
                  f"match, so this rule denies {those} whenever its other conditions hold")
    return entry.source.diag(loc, "unknown-argument", f"{head}: {effect} (list the tools it is meant "
                                                      "for in resource.tool)", "warning", key=True)


def check_conditions(rules: list[RuleEntry], servers: dict[str, ServerEntry]) -> list[Diagnostic]:
    """Each argument condition against the pinned input schema of each tool its rule applies to."""
    diags = []
    for entry in rules:
        target = servers.get(entry.rule.resource.server)
        conditions = entry.rule.conditions
        if target is None or conditions is None or not target.pins:
            continue
        tools = _applies_to(entry, target)
        for arg, ops in conditions.arguments.items():
            diags += _check_argument(entry, target, tools, arg, ops)
    return diags


def check_contracts(locks: list[tuple[SourceFile, Definitions]], servers: dict[str, ServerEntry],
                    rules: list[RuleEntry], gateway: GatewayConfig | None) -> list[Diagnostic]:
    """The checks across files, once every manifest, lock and rule is loaded."""
    diags = attach_locks(locks, servers)
    contracts = gateway.tool_contracts if gateway is not None else ToolContractSettings()
    for entry in servers.values():
        diags += check_pins(entry, contracts)
    return diags + check_conditions(rules, servers)
