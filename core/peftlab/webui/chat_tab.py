"""The Chat tab: pick a saved adapter, send a message, read the base and the adapted reply side by side."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..errors import PeftlabError
from ..generate import Sampling
from .adapters import HAS_HUB, adapter_choices, open_adapter, viewer
from .engine import ChatEngine, LoadedAdapter

HELP = (
    "Pick an adapter trained in the **Train** tab or kept in the local store (or type any adapter folder), then "
    "send a message: the adapted model and the base model answer side by side, token by token. It is a "
    "conversation: each side remembers its own earlier replies (**Clear** starts over; switching adapters does "
    "too). Temperature 0 is greedy (the same reply every time); above 0 replies are sampled (top-p)."
)


@dataclass
class ChatPicker:
    """The Chat tab's adapter widgets, for other tabs to select an adapter in it (the Hub tab's "Open in chat")."""

    adapter: gr.Dropdown  # choices: ``adapters.adapter_choices``; choosing one loads it
    path: gr.Textbox  # a typed adapter, which wins over the dropdown


def describe(a: LoadedAdapter) -> str:
    c = a.method.capabilities
    card = a.files.meta
    mode = "one batched pass (mixed-adapter batch)" if c.mixed_batch else "two passes (the method cannot mix batches)"
    merge = "yes" if c.mergeable else f"no — {c.merge_note or 'the method says so'}"
    return (
        f"Loaded `{a.path}`: method **{a.method.name}**, base `{a.base}` "
        f"(peftlab {card.get('peftlab_version', '?')}). Replies: {mode}. Mergeable: {merge}."
    )


def nearest_markdown(rows: list[list[tuple[str, float]]] | None) -> str:
    """The soft prompt read back as words: one line per virtual token, its nearest vocabulary tokens."""
    if rows is None:
        return ""
    lines = [
        "**Nearest tokens** (cosine similarity of each learned virtual token to the vocabulary):",
        "",
        "| virtual token | nearest tokens |",
        "|---:|---|",
    ]
    for i, row in enumerate(rows):
        cells = ", ".join(f"`{tok.strip() or repr(tok)}` {score:.2f}".replace("|", "\\|") for tok, score in row)
        lines.append(f"| {i} | {cells} |")
    return "\n".join(lines)


def conversation(system: str | None, history: list | None, message: str) -> list[dict[str, str]]:
    """The chat messages one side sends: the system prompt (if any), that side's earlier turns, the new message."""
    out = [{"role": "system", "content": system.strip()}] if (system or "").strip() else []
    for m in history or []:
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if role in ("user", "assistant") and isinstance(content, str):
            out.append({"role": role, "content": content})
    return [*out, {"role": "user", "content": message}]


def _error(e: BaseException) -> str:
    return f"**Cannot use this adapter:** {e}"


def visitor_token(oauth_token: gr.OAuthToken | None) -> str | None:
    """The logged-in visitor's own Hugging Face token (for a Hub id they type), or None."""
    return getattr(oauth_token, "token", None) if oauth_token is not None else None


def build(runs_dir: Path, engine: ChatEngine, tab: gr.Tab, owner=None) -> ChatPicker:
    """The tab; ``owner``: the Train tab's browser state, so the picker offers this session's runs (and a Hugging
    Face login's) when sessions are kept apart."""
    gr.Markdown(HELP)
    with gr.Row(equal_height=True):
        choices = adapter_choices(runs_dir, owners=[""]) if owner is not None else adapter_choices(runs_dir)
        adapter = gr.Dropdown(
            choices=choices,
            value=None,
            label="Saved adapter",
            info=f"Adapters under {runs_dir}/*/adapter, newest first"
            + (", then the local adapter store" if HAS_HUB else ""),
            scale=4,
            elem_id="chat-adapter",
        )
        path = gr.Textbox(
            label="…or an adapter folder" + (", store name or Hub id" if HAS_HUB else ""),
            placeholder="/path/to/adapter" + (" · name · owner/name@rev" if HAS_HUB else ""),
            scale=4,
            elem_id="chat-adapter-path",
        )
        refresh = gr.Button("Refresh", scale=1, elem_id="chat-refresh")
    with gr.Row():
        base = gr.Textbox(
            label="Base model", placeholder="empty = the base the adapter was trained on", scale=4, elem_id="chat-base"
        )
        max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens", scale=2, elem_id="chat-max-new-tokens")
    with gr.Row():
        system = gr.Textbox(
            label="System prompt",
            placeholder="optional: sent first to both models",
            scale=4,
            lines=1,
            elem_id="chat-system",
        )
        temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0 = greedy)", scale=2,
                                elem_id="chat-temperature")  # fmt: skip
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p", scale=2, elem_id="chat-top-p")
    info = gr.Markdown("No adapter loaded.", elem_id="chat-info")
    with gr.Accordion("What the soft prompt says", open=False, visible=False, elem_id="chat-nearest-box") as box:
        nearest = gr.Markdown("", elem_id="chat-nearest")
    with gr.Row(equal_height=True):
        base_bot = gr.Chatbot(label="base", height=380, elem_id="chat-base-bot")
        adapted_bot = gr.Chatbot(label="adapted", height=380, elem_id="chat-adapted-bot")
    with gr.Row():
        msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6, elem_id="chat-msg")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1, elem_id="chat-clear")

    def on_refresh(current: str | None, browser: str | None = "", profile: gr.OAuthProfile | None = None):
        fresh = adapter_choices(runs_dir, owners=viewer(browser, profile))
        values = [v for _, v in fresh]
        # the newest adapter when none (or a deleted one) is picked; choosing it loads it (``on_pick``), so the
        # selection and the status agree
        return gr.Dropdown(choices=fresh, value=current if current in values else (values[0] if values else None))

    def load(
        choice: str | None, typed: str, base_id: str, owners: list[str], token: str | None
    ) -> tuple[LoadedAdapter | None, str]:
        """Load what the page picked or typed, if its ``owners`` may open it (``open_adapter``: when sessions are
        kept apart, only their runs' adapters and the store's; a Hub id with the visitor's ``token``)."""
        where = (typed or "").strip() or choice
        if not where:
            return None, "Pick a saved adapter or type an adapter folder."
        try:
            loaded = engine.load(open_adapter(where, runs_dir, owners, token), (base_id or "").strip() or None)
        except (PeftlabError, OSError, ValueError, KeyError) as e:
            return None, _error(e)
        return loaded, describe(loaded)

    def on_pick(
        choice,
        typed,
        base_id,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
    ):
        """Load the picked adapter; the conversation starts over (the replies were another adapter's)."""
        loaded, text = load(choice, typed, base_id, viewer(browser, profile), visitor_token(oauth_token))
        if loaded is None and (choice or typed):
            gr.Warning(text.replace("**", ""))
        if loaded is None and not (choice or typed):
            text = "No adapter loaded."
        table = nearest_markdown(engine.nearest_tokens(loaded)) if loaded is not None else ""
        return text, gr.Accordion(visible=bool(table)), table, [], []

    def on_send(
        message: str,
        choice,
        typed,
        base_id,
        limit,
        base_hist,
        adapted_hist,
        system_text,
        temp,
        top,
        browser: str | None = "",
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
    ):
        message = (message or "").strip()
        if not message:
            yield base_hist, adapted_hist, gr.skip(), gr.skip()
            return
        loaded, text = load(choice, typed, base_id, viewer(browser, profile), visitor_token(oauth_token))
        if loaded is None:
            gr.Warning(text.replace("**", ""))
            yield base_hist, adapted_hist, message, text
            return
        user = {"role": "user", "content": message}
        sampling = Sampling(float(temp or 0), float(top or 1))
        adapted_prompt = conversation(system_text, adapted_hist, message)  # each side: its own earlier replies
        base_prompt = conversation(system_text, base_hist, message)
        base_hist = [*(base_hist or []), user, {"role": "assistant", "content": ""}]
        adapted_hist = [*(adapted_hist or []), user, {"role": "assistant", "content": ""}]
        yield base_hist, adapted_hist, "", text
        try:  # closing: when Gradio closes this handler (the browser went away), the reply stops at once
            stream = engine.stream(loaded, adapted_prompt, int(limit), base_message=base_prompt, sampling=sampling)
            with closing(stream) as replies:
                for b, a in replies:
                    base_hist[-1] = {"role": "assistant", "content": b}
                    adapted_hist[-1] = {"role": "assistant", "content": a}
                    yield base_hist, adapted_hist, gr.skip(), gr.skip()
        except Exception as e:  # a failed generation is reported, never a crash of the app
            yield base_hist, adapted_hist, gr.skip(), f"**Generation failed:** {type(e).__name__}: {e}"

    whose = [owner] if owner is not None else []  # the browser's owner id, for what the page may open
    send_args = dict(
        fn=on_send,
        inputs=[msg, adapter, path, base, max_new, base_bot, adapted_bot, system, temperature, top_p, *whose],
        outputs=[base_bot, adapted_bot, msg, info],
        concurrency_limit=1,
        concurrency_id="chat-model",
    )
    send.click(**send_args)
    msg.submit(**send_args)
    clear.click(lambda: ([], []), None, [base_bot, adapted_bot])
    listing = [adapter, owner] if owner is not None else [adapter]
    refresh.click(on_refresh, listing, adapter)
    tab.select(on_refresh, listing, adapter)
    pick_args = dict(
        fn=on_pick,
        inputs=[adapter, path, base, *whose],
        outputs=[info, box, nearest, base_bot, adapted_bot],
        concurrency_limit=1,
        concurrency_id="chat-model",
    )
    adapter.change(**pick_args)
    path.submit(**pick_args)
    return ChatPicker(adapter, path)
