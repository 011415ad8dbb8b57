"""Who a page is, for every tab in one place: the owner of the jobs, runs, comparisons and adapters it may see.

A user logged in with Hugging Face is ``hf:<username>``, from gradio's OAuth profile (which the server checks).
Otherwise the page is its browser: an id this server issued (``new_browser_id``, 32 hex digits) and the browser keeps
in its local storage. That value comes back from the client, so it is trusted only in the form the server issues it:
anything else (``hf:alice``, which a visitor could type to claim alice's runs, a name, an empty value) is no id at
all, and the page gets a new one. An issued id is a secret of its browser (128 random bits); a login's owner is a
public string that only the login itself may claim."""

from __future__ import annotations

import re
import uuid

BROWSER_ID = re.compile(r"[0-9a-f]{32}")  # what ``new_browser_id`` makes: uuid4().hex


def new_browser_id() -> str:
    """A fresh owner id for a browser that has none (or sent one this server did not issue)."""
    return uuid.uuid4().hex


def browser_id(value) -> str:
    """``value`` if it is a browser id this server issues, else ``""`` (never a login's ``hf:`` owner)."""
    return value if isinstance(value, str) and BROWSER_ID.fullmatch(value) else ""


def user_owner(profile) -> str | None:
    """The owner id of a Hugging Face login (``hf:<username>``), or None when nobody is logged in."""
    name = getattr(profile, "username", None) if profile is not None else None
    return f"hf:{name}" if name else None


def page_owner(browser, profile=None) -> str | None:
    """Who owns what this page starts and sees: the Hugging Face user when logged in, else the browser's issued id;
    None when it has neither (it then sees only what has no owner)."""
    return user_owner(profile) or browser_id(browser) or None


def viewer(browser, profile=None) -> list[str]:
    """Whose runs a page shows: the Hugging Face login's (``hf:<user>``) and this browser's (trained before signing
    in), or the browser's alone (``""`` for a browser without an issued id: only runs without an owner)."""
    owners = [u] if (u := user_owner(profile)) else []
    mine = browser_id(browser)
    return [*owners, mine] if mine or not owners else owners


__all__ = ["BROWSER_ID", "browser_id", "new_browser_id", "page_owner", "user_owner", "viewer"]
