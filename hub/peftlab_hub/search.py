"""Search the Hugging Face Hub for adapters of a base model (the ``base_model:adapter:<id>`` tag, PEFT library)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from peftlab import methods

from .remote import client, hub_errors, resolve_token


@dataclass(frozen=True)
class HubAdapter:
    repo_id: str
    method: str | None  # from the repo's tags: a peftlab method name, or peft's method tag (lora, prompt-tuning…)
    downloads: int
    likes: int
    last_modified: str | None  # ISO 8601
    private: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def method_of(tags: list[str]) -> str | None:
    """The adapter's method, read from its tags: ``peftlab-<name>`` or an installed method's name or peft type."""
    tags = [t.lower() for t in tags]
    for t in tags:
        if t.startswith("peftlab-"):
            return t.removeprefix("peftlab-")
    known = {}
    for m in methods():
        known.setdefault(m.name.replace("_", "-"), m.name)
        known.setdefault(m.peft_type.lower().replace("_", "-"), m.name)
    for t in tags:
        if t.replace("_", "-") in known:
            return known[t.replace("_", "-")]
    return None


def search(
    base: str, *, method: str | None = None, query: str | None = None, limit: int = 20, token: str | None = None
) -> list[HubAdapter]:
    """Adapters of ``base`` on the Hub (``library_name: peft``), most downloaded first, narrowed to ``method`` and
    to repo names containing ``query`` when given."""
    token = resolve_token(token)
    with hub_errors(f"searching adapters of {base}", token):
        found = client(token).list_models(  # the Hub tags a repo with its library, and its base as below
            filter=[f"base_model:adapter:{base}", "peft"],
            search=query,
            sort="downloads",
            limit=None if method else limit,
            full=True,
        )
        out = []
        for m in found:
            hub_method = method_of(list(m.tags or []))
            if method and (hub_method or "").replace("-", "_") != method.replace("-", "_"):
                continue
            modified = m.last_modified.isoformat() if isinstance(m.last_modified, datetime) else m.last_modified
            out.append(
                HubAdapter(m.id, hub_method, int(m.downloads or 0), int(m.likes or 0), modified, bool(m.private))
            )
            if len(out) >= limit:
                break
    return out
