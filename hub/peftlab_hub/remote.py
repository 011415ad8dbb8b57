"""The one door to the Hugging Face Hub: repo ids, the token, the endpoint, the client, and its errors said plainly.

Everything goes through ``huggingface_hub`` (its cache, its auth, ``HF_ENDPOINT``). The token comes from the
caller (``--token``), then ``HF_TOKEN``, then the token saved by ``hf auth login``; it is handed to the client and
nowhere else: never written, printed, logged or put in an error (messages pass through ``scrub``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from peftlab import AdapterError

REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class HubError(AdapterError):
    """A Hub operation failed; the message says what and what to do (and never holds the token)."""


@dataclass(frozen=True)
class HubRef:
    """A Hub adapter reference: ``owner/name`` with an optional revision (branch, tag or commit sha)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``owner/name`` Hub id, else a ``HubError`` saying what is wrong with it."""
    text = str(repo_id)
    if text.count("/") != 1:
        raise HubError(f"invalid Hub repo id {text!r}: use owner/name (exactly one '/')")
    if ".." in text or "--" in text or not REPO_ID.match(text) or text.endswith((".", "-")):
        raise HubError(
            f"invalid Hub repo id {text!r}: owner and name use letters, digits, '-', '_' and '.', "
            "with no '..', '--' or spaces, and do not end in '.' or '-'"
        )
    return text


def parse_ref(text: str, revision: str | None = None) -> HubRef:
    """``owner/name`` or ``owner/name@rev`` (``revision``, when given, wins over ``@rev``)."""
    repo_id, _, rev = str(text).partition("@")
    return HubRef(check_repo_id(repo_id), revision or rev or None)


def looks_like_hub_id(text: str) -> bool:
    """Whether an adapter argument that is no folder or store name reads as a Hub id (``owner/name[@rev]``)."""
    repo_id = str(text).partition("@")[0]
    return repo_id.count("/") == 1 and bool(REPO_ID.match(repo_id)) and not str(text).startswith((".", "/", "~"))


def endpoint() -> str:
    """The Hub the client talks to: ``HF_ENDPOINT`` (a mirror, an enterprise hub) or huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_token(token: str | Literal[False] | None = None) -> str | Literal[False] | None:
    """``token``, else ``HF_TOKEN``, else the token ``hf auth login`` saved; ``None`` when there is none. ``False``
    stays ``False``: anonymous on purpose (a web app's visitor without a login), never this machine's token."""
    if token is False:
        return False
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def scrub(text: str, token: str | None) -> str:
    """``text`` with ``token`` (and anything shaped like a Hub token) blanked out."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}\b", "hf_***", text)


def client(token: str | None = None):
    """An ``HfApi`` for ``endpoint()`` with the resolved token (anonymous when there is none, or ``token=False``)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=resolve_token(token) or False)


LOGIN_HINT = (
    "log in with `hf auth login`, set HF_TOKEN, or pass --token (a token with write access, from "
    "{endpoint}/settings/tokens)"
)


def require_write_token(token: str | None = None) -> str:
    """The token for a write, checked with the Hub before any work: missing, invalid or read-only → ``HubError``."""
    resolved = resolve_token(token)
    if not resolved:
        raise HubError("pushing needs a Hugging Face token: " + LOGIN_HINT.format(endpoint=endpoint()))
    with hub_errors("checking the token", resolved):
        info = client(resolved).whoami()
    role = (((info.get("auth") or {}).get("accessToken") or {}).get("role") or "").lower()
    if role == "read":
        raise HubError(
            "the Hugging Face token is read-only, and pushing writes: " + LOGIN_HINT.format(endpoint=endpoint())
        )
    return resolved


@contextlib.contextmanager
def hub_errors(
    doing: str, token: str | None = None, *, repo: str | None = None, revision: str | None = None
) -> Iterator[None]:
    """Turn ``huggingface_hub``'s exceptions into ``HubError``s that say what failed while ``doing`` what."""
    from huggingface_hub import errors

    where = f" {repo}" if repo else ""
    try:
        yield
    except HubError:
        raise
    except errors.RevisionNotFoundError:
        raise HubError(f"{doing}: {repo} has no revision {revision!r} (a branch, tag or commit sha)") from None
    except errors.GatedRepoError:
        raise HubError(f"{doing}: {repo} is gated; accept its terms on the Hub and use a token") from None
    except errors.RepositoryNotFoundError:
        hint = "" if resolve_token(token) else " (if it is private: " + LOGIN_HINT.format(endpoint=endpoint()) + ")"
        raise HubError(f"{doing}: repository{where} not found on {endpoint()}{hint}") from None
    except errors.EntryNotFoundError as e:
        raise HubError(f"{doing}: a file is missing from{where}: {scrub(str(e).splitlines()[0], token)}") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(
            f"{doing}: HF_HUB_OFFLINE is set, so the Hub{where} cannot be reached; unset it to go "
            "online (the local store works offline: `peftlab store list`)"
        ) from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = scrub(str(e).splitlines()[0] if str(e) else type(e).__name__, token)
        if status == 401:
            raise HubError(
                f"{doing}: the Hub refused the token (401): " + LOGIN_HINT.format(endpoint=endpoint())
            ) from None
        if status == 403:
            raise HubError(f"{doing}: not allowed (403) — the token cannot write to{where}; {first}") from None
        raise HubError(f"{doing}: the Hub answered {status or 'an error'}: {first}") from None
    except (OSError, ConnectionError) as e:  # httpx's connect errors and timeouts are OSError-like too
        raise HubError(
            f"{doing}: cannot reach the Hub at {endpoint()} ({type(e).__name__}: "
            f"{scrub(str(e), token)}); check the network or HF_ENDPOINT"
        ) from None
    except Exception as e:
        if type(e).__module__.startswith("httpx"):  # ConnectError, ReadTimeout, ...
            raise HubError(
                f"{doing}: cannot reach the Hub at {endpoint()} ({type(e).__name__}); check the network or HF_ENDPOINT"
            ) from None
        raise
