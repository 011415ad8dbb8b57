"""The Hub tab: log in, push a trained adapter with a preview of its card, search the adapters of a base model, pull
one into the local store (checked by the adapter doctor) and open it in the Chat tab.

The ``_*_inputs`` functions only build widgets; ``build`` wires their events to the ``HubTab`` methods, which read
the form and call what ``peftlab push / search / pull`` call (``peftlab_hub``), showing its ``HubError`` messages: the
hub functions check repo ids, folders and tokens, once. The token is read from the password box (held only in the
page's session), from the Hugging Face login in a Space (``gr.OAuthToken``), or else from ``HF_TOKEN`` / the saved
``hf auth login``; it is handed to ``peftlab_hub`` and nowhere else: never shown, written or put in a message.

In a Space every Hub action uses the visitor's own login and nothing else (the Space's own ``HF_TOKEN``, if it has
one, is never lent to a visitor): a push goes to the logged-in user's namespace unless the repo id names another
(an organisation of theirs), and the push picker lists the adapters of this page's owner (``jobs.saved_adapters``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path

import gradio as gr
import pandas as pd

from peftlab_hub import AdapterStore, build_card, pull, push, search
from peftlab_hub.card import LOSS_CURVE_FILE
from peftlab_hub.remote import client, endpoint, hub_errors, resolve_token, scrub

from .. import jobs
from ..errors import PeftlabError
from ..models import DEFAULT_MODEL_ID
from ..plugins import methods
from .adapters import adapter_label, store_adapters
from .chat_tab import ChatPicker
from .owners import viewer

ANY = "any"  # the method dropdown's "no filter"
SEARCH_COLUMNS = ["repo", "method", "downloads", "likes", "last change"]
HELP = (
    "Share adapters through the Hugging Face Hub (or the Hub at `HF_ENDPOINT`): **push** one you trained, "
    "**search** the adapters of a base model, **pull** one into the local adapter store (the adapter doctor checks "
    "it first) and open it in **Chat**."
)
TOKEN_INFO = (
    "Held only in this page's session: never saved, logged or shown. Empty = HF_TOKEN or the token saved by "
    "`hf auth login`."
)
LOGIN_LOCAL = (
    "To log in here, paste a Hugging Face token (with write access to push) into **Token** under "
    "*Account* and press **Check**."
)
LOGIN_SPACE = "To log in here, press **Sign in with Hugging Face** under *Account*."


def in_space() -> bool:
    """Running in a Hugging Face Space with ``gradio[oauth]``: log in with its OAuth button instead of a token box
    (without ``itsdangerous``, gradio cannot keep the login's session, so the box is shown there too)."""
    return bool(os.environ.get("SPACE_ID")) and find_spec("itsdangerous") is not None


@dataclass
class HubTab:
    """The tab's handlers (tests call them directly); the store is ``store_dir`` (None: ``PEFTLAB_STORE`` or
    ``~/.cache/peftlab/adapters``, read when used)."""

    runs_dir: Path
    store_dir: Path | None = None
    space: bool = False

    def token(self, typed: str | None, oauth_token: gr.OAuthToken | None = None) -> str | None:
        """The box's token, else the Space login's; ``None`` leaves it to ``HF_TOKEN`` or the saved login."""
        return (typed or "").strip() or (oauth_token.token if oauth_token is not None else None)

    def logged_out(self, token: str | None) -> str | None:
        """In a Space, the message for a visitor who has not logged in (the Space's own token is not theirs)."""
        return f"**Not logged in.** {LOGIN_SPACE}" if self.space and not token else None

    def failure(self, what: str, e: BaseException, token: str | None) -> str:
        """``e`` as Markdown, with the token blanked out, and how to log in here when it is about the token."""
        text = scrub(scrub(str(e), token), resolve_token(token))
        first, _, rest = text.partition("\n")
        out = f"**{what}:** {first}"
        if rest.strip():
            out += f"\n\n```text\n{rest}\n```"
        if "hf auth login" in text or "(403)" in text:
            out += "\n\n" + (LOGIN_SPACE if self.space else LOGIN_LOCAL)
        return out

    def choices(self, owner: str | None = None, *others: str) -> list[tuple[str, str]]:
        """The adapters ``owner`` (and ``others``) may push, newest first (None: every run's; see
        ``jobs.saved_adapters``), then the store's."""
        runs = {path: label for o in (owner, *others) for label, path in jobs.saved_adapters(self.runs_dir, o)}
        found = [*((runs[p], p) for p in sorted(runs, reverse=True)), *store_adapters(self.store_dir)]
        return [(label, str(path)) for label, path in found]

    def on_refresh(
        self, current: str | None, browser: str | None = "", profile: gr.OAuthProfile | None = None
    ) -> gr.Dropdown:
        """The push picker afresh: the logged-in user's adapters and this browser's (trained before signing in)."""
        fresh = self.choices(*viewer(browser, profile))
        values = [v for _, v in fresh]
        return gr.Dropdown(choices=fresh, value=current if current in values else (values[0] if values else None))

    def on_check(self, typed: str, oauth_token: gr.OAuthToken | None = None) -> str:
        """Who the token belongs to and what it may do: ``Logged in as alice (write)``."""
        token = self.token(typed, oauth_token)
        if self.logged_out(token):
            return self.logged_out(token)
        if not resolve_token(token):
            return "**Not logged in:** no token here, in HF_TOKEN or saved by `hf auth login`. " + (
                LOGIN_SPACE if self.space else LOGIN_LOCAL
            )
        try:
            with hub_errors("checking the login", token):
                info = client(token).whoami()
        except PeftlabError as e:
            return self.failure("Not logged in", e, token)
        auth = info.get("auth") or {}
        role = (auth.get("accessToken") or {}).get("role") or auth.get("type")
        source = (
            "this box"
            if (typed or "").strip()
            else "the Hugging Face login"
            if oauth_token
            else ("HF_TOKEN" if os.environ.get("HF_TOKEN") else "the saved `hf auth login`")
        )
        return (
            f"Logged in as **{info.get('name', '?')}**"
            + (f" ({role})" if role else "")
            + f" on {endpoint()} — token from {source}."
        )

    def on_preview(self, adapter: str | None, repo_id: str) -> tuple[str, gr.Image]:
        """The model card ``push`` would upload: its YAML header, its text, and the loss curve it links."""
        if not adapter:
            return "Pick an adapter to preview its card.", gr.Image(value=None, visible=False)
        try:
            card = build_card(adapter, repo_id=(repo_id or "").strip() or None)
        except (PeftlabError, OSError, ValueError) as e:
            return self.failure("No card", e, None), gr.Image(value=None, visible=False)
        png = card.files.get(LOSS_CURVE_FILE)
        image = None
        if png:
            from PIL import Image

            image = Image.open(io.BytesIO(png))
        return card_markdown(card.text), gr.Image(value=image, visible=image is not None)

    def on_push(
        self,
        adapter: str | None,
        repo_id: str,
        branch: str,
        private: bool,
        message: str,
        typed: str,
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
        progress=gr.Progress(),
    ) -> str:
        """Push the adapter and its card in one commit; say where it went (commit URL and sha). Logged in with
        Hugging Face, a repo id without an owner (or none: the run's name) goes to the user's namespace."""
        token = self.token(typed, oauth_token)
        if self.logged_out(token):
            return self.logged_out(token)
        if not adapter:
            return "Pick an adapter to push."
        repo_id = default_repo((repo_id or "").strip(), adapter, getattr(profile, "username", None))
        progress(0, desc=f"Pushing to {repo_id}…")
        try:
            done = push(
                adapter,
                repo_id,
                revision=(branch or "").strip() or None,
                private=bool(private),
                message=(message or "").strip() or None,
                token=token,
            )
        except (PeftlabError, OSError, ValueError) as e:
            return self.failure("Push failed", e, token)
        return (
            f"Pushed to [{done.repo_id}]({done.url}) on `{done.revision}`: commit `{done.commit_sha}` "
            f"([view the commit]({done.commit_url}))."
        )

    def on_search(
        self, base: str, method: str | None, query: str, typed: str, oauth_token: gr.OAuthToken | None = None
    ) -> tuple[str, pd.DataFrame]:
        """The base model's adapters on the Hub, most downloaded first, as a table."""
        token = self.token(typed, oauth_token)
        if self.logged_out(token):
            return self.logged_out(token), pd.DataFrame(columns=SEARCH_COLUMNS)
        base = (base or "").strip() or DEFAULT_MODEL_ID
        try:
            found = search(
                base,
                method=None if method in (None, "", ANY) else method,
                query=(query or "").strip() or None,
                token=token,
            )
        except (PeftlabError, OSError, ValueError) as e:
            return self.failure("Search failed", e, token), pd.DataFrame(columns=SEARCH_COLUMNS)
        rows = [[a.repo_id, a.method or "?", a.downloads, a.likes, when(a.last_modified)] for a in found]
        said = f"{len(rows)} adapter{'s' if len(rows) != 1 else ''} of `{base}`" + (
            " — pick a row to pull it." if rows else "."
        )
        return said, pd.DataFrame(rows, columns=SEARCH_COLUMNS)

    def on_select(self, evt: gr.SelectData) -> str:
        """A clicked search result: its repo id goes into the pull box."""
        row = evt.row_value or []
        return str(row[0]) if row else gr.skip()

    def on_pull(self, ref: str, typed: str, oauth_token: gr.OAuthToken | None = None, progress=gr.Progress()) -> list:
        """[status, doctor report, pulled folder, Open-in-chat button]: download, check, copy into the store."""
        token = self.token(typed, oauth_token)
        if self.logged_out(token):
            return [self.logged_out(token), "", "", gr.Button(interactive=False)]
        ref = (ref or "").strip()
        progress(0, desc=f"Pulling {ref}…")
        try:
            got = pull(ref, store=AdapterStore(self.store_dir), token=token)
        except (PeftlabError, OSError, ValueError) as e:
            return [self.failure("Pull failed", e, token), "", "", gr.Button(interactive=False)]
        asked = f" (`{got.revision}`)" if got.revision else ""
        status = (
            f"Pulled **{got.repo_id}**{asked} at commit `{got.sha}` into the local store as "
            f"`{got.path.name}`; the adapter doctor's report:"
        )
        return [status, f"```text\n{got.report.format()}\n```", str(got.path), gr.Button(interactive=True)]

    def on_open(self, pulled: str, browser: str | None = "", profile: gr.OAuthProfile | None = None) -> tuple:
        """Select the pulled adapter in the Chat tab's picker (which loads it) and switch to that tab; the picker
        offers this page's adapters (``viewer``), as its own Refresh does, never every run's."""
        if not pulled:
            return gr.skip(), gr.skip(), gr.skip()
        return gr.Dropdown(choices=self.choices(*viewer(browser, profile)), value=pulled), "", gr.Tabs(selected="chat")


def default_repo(repo_id: str, adapter: str, username: str | None) -> str:
    """``repo_id`` as typed; for a logged-in user, a bare name gets their namespace, and an empty box the adapter's
    run (or store) name: ``alice/20250101-120000-lora``."""
    if not username or "/" in repo_id:
        return repo_id
    return f"{username}/{repo_id or adapter_label(adapter)}"


def card_markdown(text: str) -> str:
    """A card for the page: the YAML header as a code block (Markdown would run it into the text), and the loss
    curve, which is shown beside it, instead of its link."""
    header, body = "", text
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end > 0:
            header, body = text[4:end], text[end + 5 :]
    body = body.replace(f"![loss curve]({LOSS_CURVE_FILE})", f"*(`{LOSS_CURVE_FILE}`: the loss curve, below)*")
    return (f"**README.md** header:\n\n```yaml\n{header}\n```\n\n" if header else "") + body


def when(iso: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM`` (UTC as the Hub gives it)."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _account_inputs(space: bool) -> tuple[gr.components.Component, gr.Button, gr.Markdown]:
    """In a Space, the Hugging Face login button (the token arrives as ``gr.OAuthToken``); locally a password box."""
    gr.Markdown("### Account")
    with gr.Row(equal_height=True):
        if space:
            gr.LoginButton(elem_id="hub-login", scale=2)
            token = gr.State("")  # no box: handlers take the OAuth token
        else:
            token = gr.Textbox(
                label="Token",
                type="password",
                value="",
                placeholder="hf_…",
                info=TOKEN_INFO,
                scale=4,
                elem_id="hub-token",
            )
        check = gr.Button("Check", scale=1, elem_id="hub-check")
    return token, check, gr.Markdown("", elem_id="hub-account")


def _push_inputs(choices: list[tuple[str, str]]) -> dict:
    gr.Markdown("### Push")
    w = {}
    with gr.Row(equal_height=True):
        w["adapter"] = gr.Dropdown(
            choices=choices,
            value=choices[0][1] if choices else None,
            label="Adapter",
            info="Trained runs, newest first, then the local store",
            scale=4,
            elem_id="hub-push-adapter",
        )
        w["refresh"] = gr.Button("Refresh", scale=1, elem_id="hub-push-refresh")
    with gr.Row():
        w["repo"] = gr.Textbox(
            label="Repo id",
            placeholder="owner/name (logged in: empty = your-name/run-name)",
            scale=3,
            elem_id="hub-push-repo",
        )
        w["branch"] = gr.Textbox(label="Branch", placeholder="empty = main", scale=2, elem_id="hub-push-branch")
        w["private"] = gr.Checkbox(label="Private", value=False, scale=1, elem_id="hub-push-private")
    w["message"] = gr.Textbox(
        label="Commit message", placeholder="empty = Upload <method> adapter with peftlab", elem_id="hub-push-message"
    )
    with gr.Row():
        w["preview"] = gr.Button("Preview card", elem_id="hub-preview")
        w["push"] = gr.Button("Push", variant="primary", elem_id="hub-push")
    w["status"] = gr.Markdown("", elem_id="hub-push-status")
    with gr.Accordion("Model card", open=True, elem_id="hub-card-box"):
        w["card"] = gr.Markdown(
            "Press **Preview card** to see the card the push uploads.", max_height=520, elem_id="hub-card"
        )
        w["curve"] = gr.Image(
            label=LOSS_CURVE_FILE, type="pil", visible=False, interactive=False, height=260, elem_id="hub-card-curve"
        )
    return w


def _search_inputs() -> dict:
    gr.Markdown("### Search")
    w = {}
    with gr.Row():
        w["base"] = gr.Textbox(label="Base model", value=DEFAULT_MODEL_ID, scale=3, elem_id="hub-search-base")
        w["method"] = gr.Dropdown(
            choices=[ANY, *(m.name for m in methods())], value=ANY, label="Method", scale=1, elem_id="hub-search-method"
        )
    with gr.Row(equal_height=True):
        w["query"] = gr.Textbox(label="Name contains", placeholder="empty = any", scale=3, elem_id="hub-search-query")
        w["search"] = gr.Button("Search", scale=1, elem_id="hub-search")
    w["status"] = gr.Markdown("", elem_id="hub-search-status")
    w["results"] = gr.Dataframe(
        value=pd.DataFrame(columns=SEARCH_COLUMNS),
        headers=SEARCH_COLUMNS,
        interactive=False,
        wrap=True,
        elem_id="hub-search-results",
    )
    return w


def _pull_inputs() -> dict:
    gr.Markdown("### Pull")
    w = {}
    with gr.Row(equal_height=True):
        w["ref"] = gr.Textbox(
            label="Repo id", placeholder="owner/name or owner/name@revision", scale=3, elem_id="hub-pull-ref"
        )
        w["pull"] = gr.Button("Pull", variant="primary", scale=1, elem_id="hub-pull")
    w["status"] = gr.Markdown("", elem_id="hub-pull-status")
    w["report"] = gr.Markdown("", elem_id="hub-pull-report")
    w["open"] = gr.Button("Open in chat", interactive=False, elem_id="hub-open")
    return w


def build(runs_dir: Path, chat: ChatPicker, tabs: gr.Tabs, tab: gr.Tab, owner: gr.BrowserState | None = None) -> HubTab:
    """The tab; ``owner``: the Train tab's browser owner state (the push picker lists that owner's adapters)."""
    hub = HubTab(Path(runs_dir), space=in_space())
    gr.Markdown(HELP)
    token, check, account = _account_inputs(hub.space)
    owner = owner if owner is not None else gr.State("")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            p = _push_inputs(hub.choices(None if jobs.shared_jobs() else ""))  # a page's own come with a refresh
        with gr.Column(scale=5, min_width=380):
            s = _search_inputs()
            pl = _pull_inputs()
    pulled = gr.State("")  # the folder of the adapter pulled last

    check.click(hub.on_check, token, account)
    p["refresh"].click(hub.on_refresh, [p["adapter"], owner], p["adapter"])
    tab.select(hub.on_refresh, [p["adapter"], owner], p["adapter"])
    p["preview"].click(hub.on_preview, [p["adapter"], p["repo"]], [p["card"], p["curve"]])
    p["push"].click(
        hub.on_push,
        [p["adapter"], p["repo"], p["branch"], p["private"], p["message"], token],
        p["status"],
        concurrency_limit=1,
        concurrency_id="hub-write",
    )
    search_args = dict(
        fn=hub.on_search, inputs=[s["base"], s["method"], s["query"], token], outputs=[s["status"], s["results"]]
    )
    s["search"].click(**search_args)
    s["query"].submit(**search_args)
    s["results"].select(hub.on_select, None, pl["ref"])
    pull_args = dict(
        fn=hub.on_pull,
        inputs=[pl["ref"], token],
        outputs=[pl["status"], pl["report"], pulled, pl["open"]],
        concurrency_limit=1,
        concurrency_id="hub-write",
    )
    pl["pull"].click(**pull_args)
    pl["ref"].submit(**pull_args)
    pl["open"].click(hub.on_open, [pulled, owner], [chat.adapter, chat.path, tabs])
    hub.push_adapter = p["adapter"]  # the Runs tab's "Push to the Hub" selects a run here
    return hub


__all__ = ["HubTab", "build", "card_markdown", "default_repo"]
