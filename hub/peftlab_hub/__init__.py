"""peftlab's adapter store (the local, offline hub)."""

from .store import AdapterInfo, AdapterStore, default_store_dir

__all__ = ["AdapterInfo", "AdapterStore", "default_store_dir"]
