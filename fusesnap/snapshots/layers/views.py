"""Views and their caches: a snapshot's merged view of its chain of layers.

A view answers what the mount asks most (an object's attributes, the object a
name names, a directory's listing) from memory when it has seen them, and
from one indexed query of rows.py when not. Only the top layer of an active
view ever changes, and no other view has that layer in its chain, so a view's
caches need no invalidation from other views.

The caches are bounded, least recently used first out, so that a view of a
million files does not hold them all: at most :data:`CACHE_LIMIT` objects,
twice as many names, and :data:`CACHE_LIMIT` entries of listings. An object
evicted while something else holds it (an open file, a change not yet
written, a cached listing) is found again by identity, not read back from
the database: one view never has two copies of an object.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections import OrderedDict

from fusesnap.snapshots.layers.rows import WHITEOUT, Attr, DirEntry, Rows, Version, fs_error

CACHE_LIMIT = int(os.environ.get("FUSESNAP_VIEW_CACHE", "65536"))
"""Objects a view keeps in memory (FUSESNAP_VIEW_CACHE; at least 16)."""

WHOLE_PER_PROBE = 8
"""Entries read whole per name looked up one by one (View._list_whole): read
together, a directory's entries (names only) cost about a tenth of a lookup
each (1.1 µs against 13 µs, in memory)."""


class View:
    """A snapshot's merged view: its chain of layers, newest first, and caches."""

    def __init__(self, rows: Rows, sid: int, chain: list[int], writable: bool,
                 limit: int = CACHE_LIMIT) -> None:
        self.rows = rows
        self.sid = sid
        self.chain = chain
        self.rank = {layer: i for i, layer in enumerate(chain)}
        self.writable = writable
        self.alive = True
        self.limit = max(16, limit)
        self.attrs: OrderedDict[int, Attr] = OrderedDict()
        # Objects evicted from `attrs`, for as long as something else holds
        # them (an open file, a row not yet written, a listing), by oid.
        self._held: weakref.WeakValueDictionary[int, Attr] = weakref.WeakValueDictionary()
        self.entries: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        # Directories all of whose entries are in `entries` (listed, or made in
        # this view): a name not there is not in the directory, with no query.
        self.complete: set[int] = set()
        # Merged directory listings; an entry change in the top layer drops its
        # directory's (set_entry), lower layers never change.
        self.listings: OrderedDict[int, list[tuple[bytes, Attr]]] = OrderedDict()
        self._listed = 0
        # Names not known looked up in each directory not known whole.
        self._probes: dict[int, int] = {}

    @property
    def top(self) -> int:
        return self.sid

    # ----------------------------------------------------------------- reading

    def attr(self, oid: int) -> Attr:
        """The effective attributes of `oid`; ENOENT if it has none."""
        attrs = self.attrs
        a = attrs.get(oid)
        if a is not None:
            attrs.move_to_end(oid)
            return a
        a = self._held.get(oid)
        if a is None:
            rank = self.rank
            for version in self.rows.versions(oid, self.top):
                if version.layer in rank:
                    a = Attr(version)
                    break
            else:
                raise fs_error(errno.ENOENT)
        self.remember(a)
        return a

    def probe(self, dir_oid: int, name: bytes, below_top: bool = False) -> int:
        """The entry the topmost layer of the chain (below the top one, if
        asked) has for (dir, name), from the database."""
        rank = self.rank
        for layer, oid in self.rows.entry(dir_oid, name,
                                          self.top - 1 if below_top else self.top):
            if layer in rank:
                return int(oid)
        return WHITEOUT

    def find(self, dir_oid: int, name: bytes) -> int:
        """The oid `name` names in directory `dir_oid`, or 0."""
        key = (dir_oid, name)
        entries = self.entries
        oid = entries.get(key)
        if oid is not None:
            entries.move_to_end(key)
            return oid
        if dir_oid in self.complete:
            return WHITEOUT
        if self._list_whole(dir_oid):
            return entries.get(key, WHITEOUT)
        # One statement finds the entry and the object's version with it: a
        # lookup's attributes then come from memory.
        rank = self.rank
        oid = WHITEOUT
        found = None
        for entry in self.rows.entry_and_versions(dir_oid, name, self.top):
            if found is None:
                if entry.layer not in rank:
                    continue
                found = entry.layer
                oid = entry.oid
                if not oid or oid in self.attrs or oid in self._held:
                    break
            elif entry.layer != found:
                break
            if entry.version is not None and entry.version.layer in rank:
                self.remember(Attr(entry.version))
                break
        self._name(key, oid)
        return oid

    def lookup(self, dir_oid: int, name: bytes) -> Attr:
        oid = self.find(dir_oid, name)
        if not oid:
            raise fs_error(errno.ENOENT)
        return self.attr(oid)

    def dir(self, oid: int) -> Attr:
        """The attributes of directory `oid`; ENOTDIR if it is something else."""
        d = self.attr(oid)
        if not d.is_dir:
            raise fs_error(errno.ENOTDIR)
        return d

    def _list_whole(self, dir_oid: int) -> bool:
        """Read the names of directory `dir_oid` whole when that costs no more
        than the lookups it has had one by one: at its 2nd, 4th, 8th... name
        not known, if all its layers' entries number at most
        :data:`WHOLE_PER_PROBE` times that. True if the directory is now
        known whole: a name not there is missing, with no statement. A create
        of many files, or a program probing a directory for names (imports,
        the dynamic loader, PATH), then asks no more statements of it for
        names that are not there; a single lookup in a large directory still
        costs one statement."""
        probes = self._probes
        n = probes.pop(dir_oid, 0) + 1
        if len(probes) >= self.limit:
            probes.clear()
        probes[dir_oid] = n
        if n < 2 or n & (n - 1):
            return False
        rows = self.rows.entries_in(dir_oid, limit=WHOLE_PER_PROBE * n + 1)
        if len(rows) > WHOLE_PER_PROBE * n:
            return False
        self._names(dir_oid, rows)
        return dir_oid in self.complete

    def _names(self, dir_oid: int, rows: list[DirEntry]) -> dict[bytes, int]:
        """Merge a directory's entries in every layer (`rows`) into the names
        this view sees, and remember them: name -> oid (0: a whiteout)."""
        best: dict[bytes, tuple[int, int]] = {}
        depth = len(self.chain)
        rank = self.rank
        for name, layer, oid in rows:
            r = rank.get(layer)
            if r is not None and r < best.get(name, (depth, 0))[0]:
                best[name] = (r, oid)
        names = {name: oid for name, (_, oid) in best.items()}
        for name, oid in names.items():
            self._name((dir_oid, name), oid)
        if len(names) <= 2 * self.limit:
            # Its names are the newest in `entries`: none was evicted.
            self.complete.add(dir_oid)
        return names

    def listdir(self, dir_oid: int) -> list[tuple[bytes, Attr]]:
        """The merged entries of a directory, sorted by name, attributes loaded
        in bulk. Callers only read the list."""
        cached = self.listings.get(dir_oid)
        if cached is not None:
            self.listings.move_to_end(dir_oid)
            return cached
        names = self._names(dir_oid, self.rows.entries_in(dir_oid))
        found = self._load([oid for oid in names.values() if oid])
        out = []
        for name in sorted(names):
            oid = names[name]
            if oid:
                a = found.get(oid)
                if a is not None:
                    out.append((name, a))
        if len(out) <= self.limit:
            self.listings[dir_oid] = out
            self._listed += len(out)
            while self._listed > self.limit:
                self._listed -= len(self.listings.popitem(last=False)[1])
        return out

    def _load(self, oids: list[int]) -> dict[int, Attr]:
        """The attributes of `oids` (those that have some in this view), the
        ones not in memory read in bulk."""
        found: dict[int, Attr] = {}
        missing = []
        for oid in set(oids):
            a = self.attrs.get(oid) or self._held.get(oid)
            if a is None:
                missing.append(oid)
            else:
                found[oid] = a
        rank = self.rank
        best: dict[int, tuple[int, Version]] = {}
        for version in self.rows.versions_of(missing):
            r = rank.get(version.layer)
            if r is not None and (version.oid not in best or r < best[version.oid][0]):
                best[version.oid] = (r, version)
        for oid, (_, version) in best.items():
            found[oid] = Attr(version)
        for a in found.values():
            self.remember(a)
        return found

    def is_empty_dir(self, dir_oid: int) -> bool:
        return not self.listdir(dir_oid)

    def xattrs(self, a: Attr) -> dict[bytes, bytes]:
        if a.xattrs is None:
            a.xattrs = self.rows.xattrs(a.oid, a.layer)
        return a.xattrs

    # ----------------------------------------------------------------- what changes tell it

    def remember(self, a: Attr) -> None:
        """Keep `a` as the object `a.oid` of this view."""
        attrs = self.attrs
        attrs[a.oid] = a
        attrs.move_to_end(a.oid)
        if len(attrs) > self.limit:
            oid, old = attrs.popitem(last=False)
            self._held[oid] = old  # gone at once unless something holds it

    def forget(self, oid: int) -> None:
        """Object `oid` is gone from this view's top layer."""
        self.attrs.pop(oid, None)
        self._held.pop(oid, None)

    def set_entry(self, dir_oid: int, name: bytes, oid: int) -> None:
        """(dir, name) now names `oid` (0: nothing)."""
        self._name((dir_oid, name), oid)
        lst = self.listings.pop(dir_oid, None)
        if lst is not None:
            self._listed -= len(lst)

    def made_dir(self, oid: int) -> None:
        """`oid` is a new directory: no layer has entries in it."""
        self.complete.add(oid)

    def _name(self, key: tuple[int, bytes], oid: int) -> None:
        entries = self.entries
        entries[key] = oid
        entries.move_to_end(key)
        if len(entries) > 2 * self.limit:
            self.complete.discard(entries.popitem(last=False)[0][0])

    def clear(self) -> None:
        """Drop every cache (the layer's rows were put back behind them)."""
        self.attrs.clear()
        self._held = weakref.WeakValueDictionary()
        self.entries.clear()
        self.complete.clear()
        self.listings.clear()
        self._listed = 0
        self._probes.clear()
