"""A tokenizer's own chat template (``tokenizer_config.json`` ``chat_template``), rendered as transformers does.

MiniMind-3's template, for one, wraps every assistant turn in a ``<think>`` block and opens the reply with an
empty one; a model fine-tuned on those prompts answers best when asked the same way, so ``chat`` renders the
template the tokenizer ships instead of plain ChatML. Rendering follows ``transformers``'
``apply_chat_template``: Jinja2 in a sandbox (the template came with a downloaded model), ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception`` and the special tokens as variables.
Jinja2 is optional (``pip install 'smoltrain[chat]'``); without it :func:`jinja_available` is False and callers
fall back to ``tokenizer.apply_chat_template`` (ChatML).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smoltrain.errors import DataError

TEMPLATE_KEY = "chat_template"
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def jinja_available() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken mapping."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_chat_template(tokenizer_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The tokenizer directory's chat template (None when it has none) and its special tokens by name.

    A list of named templates (``[{"name": "default", "template": ...}, ...]``) gives the ``default`` one."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None, {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}; copy the tokenizer files again") from None
    if not isinstance(config, dict):
        raise DataError(f"{path} is not a JSON object: copy the tokenizer files again")
    template = config.get(TEMPLATE_KEY)
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    specials = {key: text for key in SPECIAL_KEYS if (text := _token_text(config.get(key))) is not None}
    return (template if isinstance(template, str) and template.strip() else None), specials


def render_chat_template(template: str, messages: list[Mapping[str, str]], add_generation_prompt: bool = True,
                         special_tokens: Mapping[str, str] | None = None, **variables: Any) -> str:
    """``messages`` rendered with ``template``; ``variables`` (e.g. ``open_thinking``) reach the template."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=[dict(m) for m in messages],
                                                add_generation_prompt=add_generation_prompt,
                                                **dict(special_tokens or {}), **variables)
    except TemplateError as err:
        raise DataError(f"the tokenizer's chat template failed: {err}; fix chat_template in tokenizer_config.json "
                        "or remove it to use ChatML") from None
