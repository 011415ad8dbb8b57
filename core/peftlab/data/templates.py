"""Rendering a conversation as text (chat template or plain fallback) and finding its replies in that text."""

from __future__ import annotations

from typing import Any

from .rows import DatasetError


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


try:
    from jinja2 import TemplateError as _JinjaTemplateError
except ImportError:  # pragma: no cover - transformers depends on jinja2 for chat templates
    _JinjaTemplateError = ValueError
_TEMPLATE_ERRORS = (_JinjaTemplateError, ValueError, TypeError, KeyError, IndexError)

_FALLBACK_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = []
    for m in messages:
        end = eos if m["role"] == "assistant" else ""
        parts.append(f"{_FALLBACK_ROLE[m['role']]}: {m['content']}{end}\n")
    if add_generation_prompt:
        parts.append("Assistant: ")
    return "".join(parts)


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """Render ``messages`` as a generation prompt (chat template, or the plain fallback)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def _assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and find the character span of each assistant reply.

    A span starts where the template's generation prompt for that turn ends and stops after
    the turn's end-of-turn marker (trailing whitespace excluded). Spans are found by rendering
    conversation prefixes, so this works with any template that renders prefixes consistently;
    otherwise it falls back to searching for the reply text.
    """
    full = _render(tokenizer, messages)
    eos = getattr(tokenizer, "eos_token", None) or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        content = msg["content"]
        start = -1
        if i > 0:
            try:
                before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            except _TEMPLATE_ERRORS:  # some templates reject partial conversations
                before = None
            if before is not None and full.startswith(before) and len(before) >= cursor:
                start = len(before)
        if start < 0:
            start = full.find(content, cursor) if content else cursor
            if start < 0 and content.strip():
                start = full.find(content.strip(), cursor)
            if start < 0:
                raise DatasetError(f"cannot locate assistant turn {i + 1} in the rendered chat template")
        content_at = full.find(content, start) if content else start
        if content_at < 0 and content.strip():
            content = content.strip()
            content_at = full.find(content, start)
        content_end = content_at + len(content) if content_at >= 0 else start
        end = content_end
        try:
            upto = _render(tokenizer, messages[: i + 1])
        except _TEMPLATE_ERRORS:
            upto = None
        if upto is not None and full.startswith(upto) and len(upto) >= content_end:
            end = len(upto.rstrip())
            end = max(end, content_end)
        elif eos:
            rest = full[content_end:]
            if rest.lstrip().startswith(eos):
                end = content_end + (len(rest) - len(rest.lstrip())) + len(eos)
        spans.append((start, end))
        cursor = end
    return full, spans
