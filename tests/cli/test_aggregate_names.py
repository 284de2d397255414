"""`gwc validate` refuses registries where two tools would share a name on the aggregate /mcp."""
from __future__ import annotations

from pathlib import Path

from gwc.compiler.build.diagnostics import Diagnostic
from gwc.runtime.policy.names import aggregate_name
from tests.support.helpers import diagnostics, dump, errors, manifest, with_code, write_registry

CODE = "duplicate-aggregate-name"
# Two servers sharing their first 53 characters, and a tool on each whose SHA-256 prefixes agree
# (found by a birthday search): the only way two servers can share an aggregate name.
PREFIX = "x" * 52 + "-"
CROSS = ((PREFIX + "alpha", "t1764222"), (PREFIX + "beta", "t554077"))


def tools_text(name: str, tools: list[str]) -> str:
    """A manifest as YAML text with ``tools`` in this order (one line each, after the header)."""
    doc = manifest(name)
    del doc["tools"]
    return dump(doc) + "tools:\n" + "".join(f"  {t}: {{access: read}}\n" for t in tools)


def line_of(text: str, tool: str) -> int:
    return text.splitlines().index(f"  {tool}: {{access: read}}") + 1


def test_a_tool_named_like_anothers_hashed_form_is_refused(tmp_path: Path) -> None:
    shared = aggregate_name("svc", "a.b")
    lookalike = shared.removeprefix("svc__")
    assert aggregate_name("svc", lookalike) == shared  # the premise: the two names really clash
    text = tools_text("svc", ["a.b", "other", lookalike])
    write_registry(tmp_path, manifests={"svc.yaml": text})

    diags = diagnostics(tmp_path)
    assert errors(diags) == with_code(diags, CODE)
    assert with_code(diags, CODE) == [Diagnostic(
        "registry/svc.yaml", line_of(text, lookalike), 3, "error", CODE,
        f"tool '{lookalike}' of server 'svc' and tool 'a.b' of server 'svc' "
        f"(registry/svc.yaml:{line_of(text, 'a.b')}) would both be named '{shared}' on the "
        "aggregate endpoint /mcp: rename one of them")]


def test_the_later_declaration_is_the_one_reported(tmp_path: Path) -> None:
    lookalike = aggregate_name("svc", "a.b").removeprefix("svc__")
    text = tools_text("svc", [lookalike, "a.b"])
    write_registry(tmp_path, manifests={"svc.yaml": text})
    [d] = with_code(diagnostics(tmp_path), CODE)
    assert d.line == line_of(text, "a.b")
    assert d.message.startswith(f"tool 'a.b' of server 'svc' and tool '{lookalike}' of server 'svc' ")


def test_tools_of_two_servers_with_the_same_aggregate_name_are_refused(tmp_path: Path) -> None:
    (first, first_tool), (second, second_tool) = CROSS
    shared = aggregate_name(first, first_tool)
    assert aggregate_name(second, second_tool) == shared
    texts = {f"{first}.yaml": tools_text(first, [first_tool]),
             f"{second}.yaml": tools_text(second, ["ok", second_tool])}
    write_registry(tmp_path, manifests=texts)

    [d] = with_code(diagnostics(tmp_path), CODE)
    # registry/ is read in file order: "...-alpha.yaml" before "...-beta.yaml"
    assert (d.file, d.line) == (f"registry/{second}.yaml", line_of(texts[f"{second}.yaml"], second_tool))
    assert (f"tool '{second_tool}' of server '{second}' and tool '{first_tool}' of server "
            f"'{first}' (registry/{first}.yaml:{line_of(texts[f'{first}.yaml'], first_tool)}) "
            f"would both be named '{shared}'") in d.message


def test_names_that_only_look_alike_pass(tmp_path: Path) -> None:
    # shortened and hashed names of dotted, long and near-identical tools, and the same tool name
    # on two servers: all distinct on /mcp
    tools = ["a.b", "a-b", "a_b", "a.b.c", "x" * 128, "x" * 127 + "y", "x" * 60 + ".z"]
    write_registry(tmp_path, manifests={"svc.yaml": tools_text("svc", tools),
                                        "two.yaml": tools_text("two", tools)})
    assert diagnostics(tmp_path) == []


def test_a_tool_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    text = tools_text("svc", ["ok"]) + '  "bad\\n": {access: read}\n'
    write_registry(tmp_path, manifests={"svc.yaml": text})
    [d] = errors(diagnostics(tmp_path))
    assert (d.code, d.line) == ("schema", text.count("\n"))
    assert d.message.startswith("tool name 'bad\\n' is not valid")
