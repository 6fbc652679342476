"""The annotation store: one SQLite database (WAL) beside the queue, safe for several annotators.

Every change is one `BEGIN IMMEDIATE` transaction, so a killed server leaves the previous version
of an item, never half of a new one; an acknowledged save has been committed with
`synchronous=FULL`. Each save appends to `history`. An annotator works on an item only while it
holds the item's lease; a lease expires after `lease_s` without renewal, and no item is ever
leased to two annotators at once. Saves carry the version they started from, so a stale edit
is refused instead of overwriting a newer one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import pathlib
import secrets
import sqlite3
import time
from typing import Any, Callable, Iterator, Sequence

from ilf_jax.annotate.items import Item
from ilf_jax.errors import IlfError

STATUSES = ("saved", "cant_fix")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (task_id INTEGER PRIMARY KEY, position INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (task_id INTEGER PRIMARY KEY REFERENCES items, annotator_id INTEGER NOT NULL
    REFERENCES annotators, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (task_id INTEGER PRIMARY KEY REFERENCES items,
    status TEXT NOT NULL CHECK (status IN ('saved', 'cant_fix')), feedback TEXT NOT NULL, refinement TEXT NOT NULL,
    verdict TEXT, error TEXT, distance INTEGER, annotator_id INTEGER NOT NULL REFERENCES annotators,
    version INTEGER NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id INTEGER NOT NULL REFERENCES items,
    version INTEGER NOT NULL, status TEXT NOT NULL, feedback TEXT NOT NULL, refinement TEXT NOT NULL, verdict TEXT,
    annotator_id INTEGER NOT NULL REFERENCES annotators, created REAL NOT NULL, UNIQUE (task_id, version));
CREATE TABLE IF NOT EXISTS skips (task_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (task_id, annotator_id));
"""


class Conflict(Exception):
    """The item is leased to another annotator, or changed since the caller's version."""


@dataclasses.dataclass(frozen=True)
class Annotator:
    id: int
    name: str


@dataclasses.dataclass(frozen=True)
class ItemState:
    """An item with its current annotation (version 0: none yet) and who holds its lease."""

    item: Item
    position: int
    status: str  # pending | saved | cant_fix
    feedback: str
    refinement: str
    verdict: str | None  # of the stored refinement
    error: str | None
    distance: int | None  # Levenshtein(refinement, program) of the stored refinement
    version: int
    annotator: str | None
    lease_holder: str | None
    lease_expires: float | None


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    version: int
    status: str
    feedback: str
    refinement: str
    verdict: str | None
    annotator: str
    created: float


@dataclasses.dataclass(frozen=True)
class Progress:
    """Items done (saved or can't fix) out of all, and saves per annotator."""

    total: int
    saved: int
    cant_fix: int
    leased: int
    by_annotator: dict[str, int]

    @property
    def done(self) -> int:
        return self.saved + self.cant_fix

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "done": self.done, "pending": self.total - self.done}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """The annotation database at `path` (created on first use)."""

    def __init__(self, path: str | pathlib.Path, *, lease_s: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = pathlib.Path(path)
        self.lease_s = float(lease_s)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = self._connect()
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise IlfError(f"{self.path}: not a usable annotation database: {e}") from None

    # -- plumbing ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error)."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def secret(self) -> bytes:
        """The database's random key (signs CSRF tokens)."""
        con = self._connect()
        try:
            return bytes.fromhex(con.execute("SELECT value FROM meta WHERE key='secret'").fetchone()[0])
        finally:
            con.close()

    # -- items and annotators -------------------------------------------------------------------
    def sync_items(self, items: Sequence[Item]) -> int:
        """Add the items not in the database yet (keyed by task id); returns how many were added.
        Items already annotated keep their stored program, so their history stays meaningful."""
        with self._tx() as db:
            start = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
            added = 0
            for it in items:
                data = json.dumps(it.to_json(), sort_keys=True)
                row = db.execute("SELECT data FROM items WHERE task_id=?", (it.task_id,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO items VALUES (?, ?, ?)", (it.task_id, start + added, data))
                    added += 1
                elif row[0] != data and not db.execute("SELECT 1 FROM annotations WHERE task_id=?",
                                                       (it.task_id,)).fetchone():
                    db.execute("UPDATE items SET data=? WHERE task_id=?", (data, it.task_id))
            return added

    def add_annotator(self, name: str) -> str:
        """Create annotator `name` (or give it a new token) and return its token; only the hash is stored."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise IlfError(f"annotator name {name!r}: must be 1-64 printable characters")
        token = secrets.token_urlsafe(24)
        with self._tx() as db:
            db.execute("INSERT INTO annotators (name, token_hash, created) VALUES (?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET token_hash=excluded.token_hash",
                       (name, token_hash(token), self.clock()))
        return token

    def local_annotator(self, name: str) -> Annotator:
        """The annotator `name` for token-less use on loopback (created without a token if new)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO annotators (name, token_hash, created) VALUES (?, NULL, ?)",
                       (name, self.clock()))
            aid = db.execute("SELECT id FROM annotators WHERE name=?", (name,)).fetchone()[0]
        return Annotator(aid, name)

    def has_tokens(self) -> bool:
        """True when some annotator has a token (needed before serving beyond loopback)."""
        con = self._connect()
        try:
            return con.execute("SELECT 1 FROM annotators WHERE token_hash IS NOT NULL LIMIT 1").fetchone() is not None
        finally:
            con.close()

    def annotator_for_token(self, token: str | None) -> Annotator | None:
        """The annotator whose token this is (constant-time compare), else None."""
        if not token:
            return None
        want = token_hash(token)
        con = self._connect()
        try:
            rows = con.execute("SELECT id, name, token_hash FROM annotators WHERE token_hash IS NOT NULL").fetchall()
        finally:
            con.close()
        found = None
        for aid, name, h in rows:
            if hmac.compare_digest(h, want):
                found = Annotator(aid, name)
        return found

    # -- reading --------------------------------------------------------------------------------
    def _state(self, db: sqlite3.Connection, task_id: int) -> ItemState:
        row = db.execute(
            "SELECT i.data, i.position, a.status, a.feedback, a.refinement, a.verdict, a.error, a.distance, "
            "a.version, wa.name, "
            "wl.name, l.expires FROM items i LEFT JOIN annotations a ON a.task_id=i.task_id "
            "LEFT JOIN annotators wa ON wa.id=a.annotator_id "
            "LEFT JOIN leases l ON l.task_id=i.task_id AND l.expires>? "
            "LEFT JOIN annotators wl ON wl.id=l.annotator_id WHERE i.task_id=?", (self.clock(), task_id)).fetchone()
        if row is None:
            raise KeyError(task_id)
        data, pos, status, fb, ref, verdict, error, distance, version, who, holder, expires = row
        item = Item(**json.loads(data))
        return ItemState(item, pos, status or "pending", fb if fb is not None else "",
                         ref if ref is not None else item.program, verdict, error, distance, version or 0, who,
                         holder, expires)

    def get(self, task_id: int) -> ItemState:
        """The item's current state (KeyError if unknown)."""
        con = self._connect()
        try:
            return self._state(con, task_id)
        finally:
            con.close()

    def queue(self) -> list[ItemState]:
        """Every item in queue order."""
        con = self._connect()
        try:
            ids = [r[0] for r in con.execute("SELECT task_id FROM items ORDER BY position")]
            return [self._state(con, i) for i in ids]
        finally:
            con.close()

    def history(self, task_id: int) -> list[HistoryEntry]:
        """Every saved version of the item, oldest first."""
        con = self._connect()
        try:
            rows = con.execute("SELECT h.version, h.status, h.feedback, h.refinement, h.verdict, a.name, h.created "
                               "FROM history h JOIN annotators a ON a.id=h.annotator_id WHERE h.task_id=? "
                               "ORDER BY h.version", (task_id,)).fetchall()
        finally:
            con.close()
        return [HistoryEntry(*r) for r in rows]

    def progress(self) -> Progress:
        con = self._connect()
        try:
            total = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            counts = dict(con.execute("SELECT status, COUNT(*) FROM annotations GROUP BY status").fetchall())
            leased = con.execute("SELECT COUNT(*) FROM leases WHERE expires>?", (self.clock(),)).fetchone()[0]
            by = dict(con.execute("SELECT w.name, COUNT(*) FROM annotations a JOIN annotators w "
                                  "ON w.id=a.annotator_id GROUP BY w.name").fetchall())
        finally:
            con.close()
        return Progress(total, counts.get("saved", 0), counts.get("cant_fix", 0), leased, by)

    # -- leases ---------------------------------------------------------------------------------
    def _lease(self, db: sqlite3.Connection, who: Annotator, task_id: int) -> None:
        """Give `who` the lease on `task_id` (dropping its other leases); Conflict if another holds it."""
        now = self.clock()
        row = db.execute("SELECT l.annotator_id, w.name FROM leases l JOIN annotators w ON w.id=l.annotator_id "
                         "WHERE l.task_id=? AND l.expires>?", (task_id, now)).fetchone()
        if row is not None and row[0] != who.id:
            raise Conflict(f"item {task_id} is being annotated by {row[1]}")
        db.execute("DELETE FROM leases WHERE annotator_id=? OR expires<=?", (who.id, now))
        db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (task_id, who.id, now + self.lease_s))

    def next_item(self, who: Annotator) -> ItemState | None:
        """The item `who` should work on, leased to it: the pending item it already holds, else the
        first pending item nobody holds (items it skipped come last); None when none is left."""
        with self._tx() as db:
            now = self.clock()
            held = db.execute("SELECT l.task_id FROM leases l LEFT JOIN annotations a ON a.task_id=l.task_id "
                              "WHERE l.annotator_id=? AND l.expires>? AND a.task_id IS NULL", (who.id, now)).fetchone()
            if held is None:
                held = db.execute(
                    "SELECT i.task_id FROM items i LEFT JOIN annotations a ON a.task_id=i.task_id "
                    "LEFT JOIN leases l ON l.task_id=i.task_id AND l.expires>? AND l.annotator_id!=? "
                    "LEFT JOIN skips s ON s.task_id=i.task_id AND s.annotator_id=? "
                    "WHERE a.task_id IS NULL AND l.task_id IS NULL "
                    "ORDER BY s.task_id IS NOT NULL, i.position LIMIT 1", (now, who.id, who.id)).fetchone()
            if held is None:
                db.execute("DELETE FROM leases WHERE annotator_id=?", (who.id,))
                return None
            self._lease(db, who, held[0])
            return self._state(db, held[0])

    def claim(self, who: Annotator, task_id: int) -> ItemState:
        """Lease a given item to `who` (to open or revise it); Conflict if another annotator holds it."""
        with self._tx() as db:
            self._state(db, task_id)
            self._lease(db, who, task_id)
            return self._state(db, task_id)

    def renew(self, who: Annotator, task_id: int) -> float:
        """Extend `who`'s lease on the item; returns the new expiry. Conflict if it lost the lease to another."""
        with self._tx() as db:
            self._lease(db, who, task_id)
            return self.clock() + self.lease_s

    def release(self, who: Annotator) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE annotator_id=?", (who.id,))

    def skip(self, who: Annotator, task_id: int) -> None:
        """Put the item at the back of `who`'s queue and give up its lease."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?)", (task_id, who.id, self.clock()))
            db.execute("DELETE FROM leases WHERE task_id=? AND annotator_id=?", (task_id, who.id))

    # -- saving ---------------------------------------------------------------------------------
    def save(self, who: Annotator, task_id: int, *, status: str, feedback: str, refinement: str,
             base_version: int, verdict: str | None = None, error: str | None = None,
             distance: int | None = None) -> int:
        """Store a new version of the item's annotation in one transaction; returns its version.

        Conflict when another annotator holds the item, or when `base_version` is not the current
        version (someone saved in between)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        with self._tx() as db:
            self._lease(db, who, task_id)
            row = db.execute("SELECT version FROM annotations WHERE task_id=?", (task_id,)).fetchone()
            current = row[0] if row else 0
            if base_version != current:
                raise Conflict(f"item {task_id} changed since version {base_version} (now version {current})")
            version, now = current + 1, self.clock()
            db.execute("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (task_id, status, feedback, refinement, verdict, error, distance, who.id, version, now))
            db.execute("INSERT INTO history (task_id, version, status, feedback, refinement, verdict, annotator_id, "
                       "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (task_id, version, status, feedback, refinement, verdict, who.id, now))
            return version

    def annotations(self) -> list[ItemState]:
        """Every saved (not can't-fix) item in queue order."""
        con = self._connect()
        try:
            rows = con.execute("SELECT a.task_id FROM annotations a JOIN items i ON i.task_id=a.task_id "
                               "WHERE a.status='saved' ORDER BY i.position").fetchall()
            return [self._state(con, tid) for (tid,) in rows]
        finally:
            con.close()
