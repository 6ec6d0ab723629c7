"""An Ollama Modelfile for an exported GGUF: the YaYi format as a Go template, its default system text,
and the stops.

The TEMPLATE is built from the same `Template` fields the core renders with, each piece as a Go string
literal, so Ollama's text/template produces byte for byte what `prompt.render_inference` does, except that under
`strip_at_markers` (yayi-llama2) a message that ends in whitespace keeps it: Go templates have no function to strip it.
"""

from __future__ import annotations

import json
import re

from yayi_cli.core.prompt import END_MARKER, HUMAN_MARKER, Template
from yayi_cli.runtime.errors import UsageError


MODELFILE = "Modelfile"
GGUF_NAME = "model.gguf"


def _go(text: str) -> str:
    """`text` as a Go string literal (JSON's escapes are a subset of Go's)."""
    return json.dumps(text, ensure_ascii=False)


def _then(header: str, text: str, template: Template) -> str:
    """`header` and then `text` (a Go value). Under `strip_at_markers` an empty text leaves the header without its
    trailing whitespace, as the core does; Go templates cannot strip the whitespace a message itself ends with."""
    full = f"{{{{ {_go(header)} }}}}{{{{ {text} }}}}"
    if not template.strip_at_markers or header == header.rstrip():
        return full
    return f"{{{{ if {text} }}}}{full}{{{{ else }}}}{{{{ {_go(header.rstrip())} }}}}{{{{ end }}}}"


def go_template(template: Template) -> str:
    """System, then each user and assistant message, then the assistant header when the user spoke last."""
    return "".join((
        _then(template.system_header, ".System", template),
        '{{- $last := "" }}',
        "{{- range .Messages }}",
        '{{- if eq .Role "user" }}',
        _then(template.separator + template.human_header, ".Content", template), f"{{{{ {_go(template.separator)} }}}}",
        '{{- else if eq .Role "assistant" }}',
        _then(template.assistant_header, ".Content", template), f"{{{{ {_go(template.separator + template.end)} }}}}",
        "{{- end }}",
        '{{- if ne .Role "system" }}{{ $last = .Role }}{{ end }}',
        "{{- end }}",
        f'{{{{- if eq $last "user" }}}}{{{{ {_go(template.assistant_header)} }}}}{{{{ end }}}}',
    ))


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UsageError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(template: Template) -> str:
    """The Modelfile beside `model.gguf`."""
    return "\n".join((
        f"FROM ./{GGUF_NAME}",
        f"TEMPLATE {_triple_quoted(go_template(template), 'template')}",
        f"SYSTEM {_triple_quoted(template.system, 'default system text')}",
        f"PARAMETER stop {_go(END_MARKER)}",
        f"PARAMETER stop {_go(HUMAN_MARKER)}",
        "",
    ))


def model_name(directory_name: str) -> str:
    """A name `ollama create` accepts, from the output directory's name."""
    return re.sub(r"[^a-z0-9._-]+", "-", directory_name.lower()).strip("-._") or "yayi"
