"""The documentation: README.md is a short tour, docs/ holds one page per command, and both stay true.

Every relative link leads somewhere, every `yayi` command line shown in a code block is one the real
CLI accepts, and every flag a command has is described on its page, so a new flag needs its docs.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from tests.helpers import REPO
from yayi_cli.cli.app import app


README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

# The page that documents each command; "" is `yayi` itself (its global options).
PAGES = {
    "": "README.md",
    "data validate": "docs/data.md",
    "data split": "docs/data.md",
    "data preview": "docs/data.md",
    "train": "docs/train.md",
    "plot": "docs/train.md",
    "eval": "docs/eval.md",
    "chat": "docs/chat.md",
    "quantize": "docs/quantize.md",
    "merge": "docs/merge.md",
    "serve": "docs/serve.md",
    "web": "docs/web.md",
    "template install": "docs/template.md",
    "export gguf": "docs/export.md",
    "export ollama": "docs/export.md",
}
# Code blocks in these languages hold command lines: every line, or in `console` only those after `$ `.
SHELL_LANGUAGES = {"sh", "bash", "shell", "zsh", "fish"}
CONTROL_OPERATORS = {"|", "||", "&", "&&", ";", "(", ")", "|&"}
REDIRECTIONS = {"<", ">", ">>"}


# --- reading Markdown -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int  # of the opening fence
    language: str
    text: str


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown file, with their language (the fence's info string)."""
    blocks, opened, body = [], None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^(```+|~~~+)\s*(\S*)", line)
        if opened is None and fence:
            opened, body = (number, fence.group(1), fence.group(2)), []
        elif opened is not None and line.strip() == opened[1]:
            blocks.append(CodeBlock(path, opened[0], opened[2], "\n".join(body)))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"{path}:{opened[0]}: code block never closed"
    return blocks


def without_code_blocks(path: Path) -> str:
    """The file without its fenced code blocks, where a `#` line is no heading and `[x](y)` no link."""
    return re.sub(r"^(```+|~~~+).*?^\1\s*$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_code_blocks(path), flags=re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    """Targets of the file's Markdown links and images that are not URLs with a scheme."""
    prose = re.sub(r"(`+).+?\1", "", without_code_blocks(path), flags=re.S)  # nor in inline code
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    return [target for target in targets if not re.match(r"^[a-zA-Z][\w+.-]*:", target)]


# --- reading command lines --------------------------------------------------------------------------

def logical_lines(block: CodeBlock) -> list[str]:
    """The block's command lines: continuations (a trailing backslash) joined, prompts removed."""
    lines, pending = [], None
    for raw in block.text.splitlines():
        if pending is None:
            if block.language == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            pending = ""
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = None
    assert pending is None, f"{block.path}:{block.line}: a command line ends in a backslash with nothing after it"
    return lines


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a word outside quotes (as the shell reads it)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def substitutions(line: str) -> tuple[str, list[str]]:
    """The line with each `$(...)` replaced by one word, and the commands inside them."""
    inner, out, index = [], [], 0
    while index < len(line):
        if line.startswith("$(", index):
            depth, end = 1, index + 2
            while end < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            assert depth == 0, f"unbalanced $( in {line!r}"
            nested, more = substitutions(line[index + 2:end - 1])
            inner += [nested, *more]
            out.append("SUBSTITUTED")
            index = end
        else:
            out.append(line[index])
            index += 1
    return "".join(out), inner


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command on a shell line: split at pipes, `;`, `&&`, redirections..."""
    line, inner = substitutions(without_comment(line))
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    commands, words, redirected = [], [], False
    for token in lexer:
        if token in CONTROL_OPERATORS:
            commands.append(words)
            words = []
        elif token in REDIRECTIONS:
            redirected = True
        elif redirected:  # the file after a redirection belongs to no command
            redirected = False
        else:
            words.append(token)
    commands.append(words)
    for command in inner:
        commands += simple_commands(command)
    return [words for words in commands if words]


def yayi_invocation(words: list[str]) -> list[str] | None:
    """The arguments after `yayi` when the command runs yayi (after any `NAME=value` assignments)."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words[1:] if words and words[0] == "yayi" else None


@functools.cache  # read once for all the tests below
def documented_invocations() -> list[tuple[str, list[str]]]:
    """Every `yayi` command line in the docs' shell code blocks, as (where, arguments)."""
    found = []
    for path in DOC_FILES:
        for block in code_blocks(path):
            if block.language != "console" and block.language not in SHELL_LANGUAGES:
                continue
            for line in logical_lines(block):
                for words in simple_commands(line):
                    arguments = yayi_invocation(words)
                    if arguments is not None:
                        found.append((f"{path.relative_to(REPO)}:{block.line}: yayi {' '.join(arguments)}", arguments))
    return found


# --- the real CLI -----------------------------------------------------------------------------------

@functools.cache
def click_command():
    return typer.main.get_command(app)


def options_of(command, context) -> dict[str, object]:
    """Every option string the command accepts, `--help` included, with its parameter."""
    return {name: param for param in command.get_params(context) if param.param_type_name == "option"
            for name in (*param.opts, *param.secondary_opts)}


def check_invocation(arguments: list[str]) -> tuple[str, list[str]]:
    """The command path the arguments name, and what in them that command does not know."""
    command = click_command()
    context = command.make_context("yayi", [], resilient_parsing=True)
    path, unknown, index = [], [], 0
    while index < len(arguments) and arguments[index] != "--":
        word = arguments[index]
        if word.startswith("-") and word != "-":
            name, given_value = word.split("=", 1)[0], "=" in word
            option = options_of(command, context).get(name)
            if option is None:
                unknown.append(word)
            elif not option.is_flag and not given_value:
                index += 1  # its value, which may look like anything
        elif hasattr(command, "commands"):
            if word not in command.commands:
                unknown.append(f"command {word!r}")
                break
            path.append(word)
            command = command.commands[word]
            context = command.make_context(word, [], parent=context, resilient_parsing=True)
        index += 1
    return " ".join(path), unknown


def all_commands() -> dict[str, object]:
    """Every command that does work, by its path ("" for `yayi` itself), with its click command."""
    found = {}

    def walk(command, path):
        if not hasattr(command, "commands"):
            found[" ".join(path)] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    root = click_command()
    found[""] = root
    walk(root, [])
    return found


def long_flags(command) -> set[str]:
    return {name for param in command.params if param.param_type_name == "option"
            for name in (*param.opts, *param.secondary_opts) if name.startswith("--")}


# --- the specification ------------------------------------------------------------------------------

def test_the_readme_is_a_short_tour():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"


def test_every_command_has_a_page_and_the_pages_exist():
    assert set(PAGES) == set(all_commands()), "a new command needs a page in PAGES (and the page itself)"
    for page in set(PAGES.values()):
        assert (REPO / page).is_file(), page


def test_the_readme_links_every_page_in_docs():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(README)}
    unlinked = [path.name for path in DOC_FILES[1:] if path.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_code_block_names_its_language(path):
    """So that this test knows which blocks hold command lines."""
    unnamed = [block.line for block in code_blocks(path) if not block.language]
    assert not unnamed, f"{path.name}: code blocks without a language at lines {unnamed}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings_that_exist(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_every_yayi_command_line_in_the_docs_is_one_the_cli_accepts():
    invocations = documented_invocations()
    assert len(invocations) > 30  # the parsing found the examples (a broken reader would find none)
    wrong = []
    for where, arguments in invocations:
        path, unknown = check_invocation(arguments)
        if unknown or path not in all_commands():
            wrong.append(f"{where}\n    -> command {path or 'yayi'!r}, unknown: {', '.join(unknown) or 'none'}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("command_path", [path for path in PAGES if path])
def test_every_command_is_shown_at_work_on_its_page(command_path):
    page = REPO / PAGES[command_path]
    shown = {check_invocation(arguments)[0] for where, arguments in documented_invocations()
             if where.startswith(PAGES[command_path] + ":")}
    assert command_path in shown, f"{page.name} has no `yayi {command_path} ...` example in a code block"


@pytest.mark.parametrize("command_path", list(PAGES), ids=lambda path: path or "yayi")
def test_every_long_flag_of_a_command_is_described_on_its_page(command_path):
    text = (REPO / PAGES[command_path]).read_text(encoding="utf-8")
    missing = sorted(flag for flag in long_flags(all_commands()[command_path])
                     if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text))
    assert not missing, f"{PAGES[command_path]} does not mention these flags of `yayi {command_path}`: {missing}"


# --- the readers above, on examples (so that a bug in them cannot hide a wrong command) ---------------

def invocations_in(language: str, text: str) -> list[list[str]]:
    block = CodeBlock(Path("example.md"), 1, language, text)
    return [arguments for line in logical_lines(block) for words in simple_commands(line)
            if (arguments := yayi_invocation(words)) is not None]


def test_command_lines_are_read_as_the_shell_reads_them():
    console = (
        "$ HF_HUB_OFFLINE=1 yayi -q data validate 'a b.jsonl' \\\n"
        "    --json | jq .ok   # a comment with 'quotes\n"
        "output that mentions yayi chat --bogus is not a command\n"
        "$ echo \"你好\" | yayi chat --model=ckpt > out.txt && yayi eval --model \"$(yayi x --y)\" -o r#1"
    )
    assert invocations_in("console", console) == [
        ["-q", "data", "validate", "a b.jsonl", "--json"],
        ["chat", "--model=ckpt"],
        ["eval", "--model", "SUBSTITUTED", "-o", "r#1"],
        ["x", "--y"],
    ]
    assert invocations_in("sh", "yayi train --lr 1e-5  # flags override the file\nmake demo") == [
        ["train", "--lr", "1e-5"]]
    assert invocations_in("python", "print('yayi chat --greedy')") == []


def test_unknown_commands_and_flags_are_named():
    assert check_invocation(["-q", "data", "split", "x.jsonl", "--test-size", "4", "--seed=1", "-o", "d"]) == (
        "data split", [])
    assert check_invocation(["chat", "--model", "m", "--no-such-flag", "-Z"]) == ("chat", ["--no-such-flag", "-Z"])
    assert check_invocation(["data", "frobnicate", "--json"]) == ("data", ["command 'frobnicate'"])
    assert check_invocation(["eval", "--fail-if", "-1", "--model", "m"]) == ("eval", [])  # a value, not a flag


def test_links_and_anchors_are_read_from_prose_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A `code` title, with punctuation!\n## 中文 标题\n## A `code` title, with punctuation!\n"
        "See [this](other.md#x) and ![a picture](img.png) and [site](https://example.com).\n"
        "`[not a link](nowhere.md)`\n```sh\n# not a heading\necho '[no](link.md)'\n```\n",
        encoding="utf-8")
    assert relative_links(page) == ["other.md#x", "img.png"]
    assert heading_anchors(page) == {"a-code-title-with-punctuation", "中文-标题", "a-code-title-with-punctuation-1"}
