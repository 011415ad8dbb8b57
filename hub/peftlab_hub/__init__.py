"""peftlab-hub: the layer between peftlab and the Hugging Face Hub — push, pull, search, the adapter doctor,
model cards — and the local adapter store (the offline hub). Core never imports it; the CLI and the app do."""

from .card import Card, build_card
from .cli import add_commands
from .compose import compose
from .doctor import Check, Report, check, diagnose
from .pull import PullResult, provenance, pull
from .push import PushResult, push
from .remote import HubError, HubRef, parse_ref
from .resolve import ResolvedAdapter, resolve_adapter
from .search import HubAdapter, search
from .stack import StackError, stack
from .store import AdapterInfo, AdapterStore, default_store_dir

__all__ = [
    "AdapterInfo",
    "AdapterStore",
    "Card",
    "Check",
    "HubAdapter",
    "HubError",
    "HubRef",
    "PullResult",
    "PushResult",
    "Report",
    "ResolvedAdapter",
    "add_commands",
    "build_card",
    "check",
    "compose",
    "default_store_dir",
    "diagnose",
    "parse_ref",
    "provenance",
    "pull",
    "push",
    "resolve_adapter",
    "search",
    "stack",
    "StackError",
]
