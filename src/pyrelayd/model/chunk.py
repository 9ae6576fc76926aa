"""Trace chunks: the directories a session's streams write into, and their registry.

A chunk is shared by every relay session of one sessiond session (the kernel, 32-bit and 64-bit
consumer daemons each have their own relay session). Its holders (sessions, streams, viewer
streams) take and drop references explicitly; when the last one goes, the chunk's close command
runs (archive it, delete it, or leave it) and it leaves the registry.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
from pathlib import Path

from pyrelayd.model.cleanup import attempt
from pyrelayd.model.counters import RelayCounters
from pyrelayd.storage import files, paths
from pyrelayd.storage.fdpool import FdPool, PooledFile

log = logging.getLogger(__name__)

RegistryKey = tuple[bytes, int]  # (sessiond uuid, sessiond session id)


class CloseCommand(enum.Enum):
    """What happens to a trace chunk when its last holder lets go (lttng's
    `lttng_trace_chunk_command_type`, with its values: `CloseCommand(wire_value)` converts)."""

    MOVE_TO_COMPLETED = 0  # a rotation: archive it as archives/START-END-ID
    NO_OPERATION = 1  # leave it where it is
    DELETE = 2  # a clear: unlink its files and remove its empty directories


class ChunkError(Exception):
    pass


class TraceChunk:
    def __init__(
        self,
        chunk_id: int | None,
        creation_time: int,
        path: str | None,
        session_directory: Path,
        override_name: str | None = None,
        pool: FdPool | None = None,
        counters: RelayCounters | None = None,
    ) -> None:
        self.id = chunk_id
        self.creation_time = creation_time
        self.close_time: int | None = None
        self.name_overridden = override_name is not None
        if override_name is not None:
            self.name: str | None = override_name
        elif chunk_id:
            self.name = paths.chunk_name(chunk_id, creation_time)
        else:
            self.name = None  # chunk 0 is only named when it closes
        if self.name_overridden or path is None:
            path = self.name
        if path is None:
            raise ChunkError("a chunk without a name needs an explicit path")
        self.path: str = path
        self.session_directory = session_directory
        self.pool = pool if pool is not None else FdPool()
        self.counters = counters  # where its disk errors are counted
        self.close_command: CloseCommand | None = None
        self.top_level_directories: list[str] = []
        self._checked_directories: set[Path] = set()  # already seen to stay inside
        self.files: set[str] = set()
        self.references = 1
        self.registry: ChunkRegistry | None = None
        self.registry_key: RegistryKey | None = None

    def __repr__(self) -> str:
        return f"TraceChunk(id={self.id}, path={self.path!r})"

    @property
    def anonymous(self) -> bool:
        return self.id is None

    @property
    def directory(self) -> Path:
        return self.session_directory / self.path if self.path else self.session_directory

    # ----------------------------------------------------------------- references

    def get(self) -> TraceChunk:
        if self.references <= 0:
            raise ChunkError(f"{self} was already released")
        self.references += 1
        return self

    def put(self) -> None:
        self.references -= 1
        if self.references == 0:
            self._release()

    def _release(self) -> None:
        """Leave the registry, then run the close command (a failure is logged and counted:
        whatever could be archived or deleted was)."""
        if self.registry is not None and self.registry_key is not None:
            self.registry.forget(self)
        command = self.close_command.name if self.close_command is not None else "no"
        attempt(self, f"close command {command}", self._run_close_command, self.counters)

    # ----------------------------------------------------------------- files

    def create_subdirectory(self, relative: str) -> Path:
        relative = paths.check_relative_path(relative, "directory")
        top = relative.split("/", 1)[0]
        if top not in self.top_level_directories:
            self.top_level_directories.append(top)
        directory = self.directory / relative
        self._check_inside(directory)
        files.make_directories(directory)
        return directory

    def _check_inside(self, directory: Path) -> None:
        """`directory` stays in the session directory (symlinks resolved; checked once)."""
        if directory not in self._checked_directories:
            paths.inside(self.session_directory, directory)
            self._checked_directories.add(directory)

    def create_file(self, relative: str, *, unlink_first: bool = False) -> PooledFile:
        """Create (truncate) a file of this chunk; it follows the chunk if the chunk moves."""
        target = self.directory / relative
        self._check_inside(target.parent)
        if unlink_first:
            files.unlink_if_present(target)
        file = PooledFile.create(self.pool, lambda: self.directory / relative)
        self.files.add(relative)
        return file

    def unlink_file(self, relative: str) -> None:
        files.unlink_if_present(self.directory / relative)
        self.files.discard(relative)

    # ----------------------------------------------------------------- naming

    def rename_path(self, new_path: str | None) -> None:
        """Move the chunk's directory; None means "its own name". Open files stay valid."""
        if self.name_overridden:
            raise ChunkError("cannot rename a chunk whose name is overridden")
        if new_path is None:
            new_path = self.name
            if new_path is None:
                raise ChunkError("an unnamed chunk has no path to go to")
        old_path = self.path
        if new_path == old_path:
            return
        self._checked_directories.clear()
        if not new_path and not old_path:
            raise ChunkError('cannot rename "" to ""')
        base = self.session_directory
        if old_path and new_path:
            if (base / old_path).exists():
                os.rename(base / old_path, base / new_path)
        elif not old_path:
            # The chunk lives in the session directory itself: move its top-level directories.
            files.make_directories(base / new_path)
            self._move_top_level_directories(base, base / new_path, new_path)
            return
        else:
            self._move_top_level_directories(base / old_path, base, new_path)
            files.remove_empty_tree(base / old_path)
        self.path = new_path

    def _move_top_level_directories(self, source: Path, destination: Path,
                                    new_path: str) -> None:
        """Move each top-level directory that can be moved; the chunk is then at `new_path`
        and the first failure (a directory left behind) is raised."""
        failure: OSError | None = None
        for top in self.top_level_directories:
            try:
                if (source / top).exists():
                    os.rename(source / top, destination / top)
            except OSError as error:
                failure = failure or error
        self.path = new_path
        if failure is not None:
            raise failure

    def set_close_time(self, close_time: int) -> None:
        self.close_time = close_time
        if not self.name_overridden and self.id is not None:
            self.name = paths.chunk_name(self.id, self.creation_time, close_time)

    # ----------------------------------------------------------------- close commands

    def _run_close_command(self) -> None:
        if self.close_command is CloseCommand.MOVE_TO_COMPLETED:
            self._move_to_completed()
        elif self.close_command is CloseCommand.DELETE:
            self._delete()

    def _move_to_completed(self) -> None:
        if self.id is None or self.close_time is None:
            return
        if self.name_overridden:
            raise ChunkError("a chunk whose name is overridden is not archived")
        archived = paths.chunk_name(self.id, self.creation_time, self.close_time)
        archives = self.session_directory / paths.ARCHIVES_DIRECTORY
        files.make_directories(archives)
        if self.path != paths.TMP_OLD_CHUNK:
            # Archived from wherever it is if this fails (what could move to it, moved).
            attempt(self, f"moving it to {paths.TMP_OLD_CHUNK}",
                    functools.partial(self.rename_path, paths.TMP_OLD_CHUNK), self.counters)
        if not self.path:
            log.error("%s: not archived: it could not leave the session directory", self)
            return
        os.rename(self.session_directory / self.path, archives / archived)
        # Live viewers still reading this chunk find its files at their final place.
        self.path = f"{paths.ARCHIVES_DIRECTORY}/{archived}"
        log.info("trace chunk %s archived as %s", self.id, archives / archived)

    def _delete(self) -> None:
        """Unlink every file it created, then its empty directories; each one that can be."""
        for relative in sorted(self.files):
            attempt(self, f"deleting {relative}", functools.partial(self.unlink_file, relative),
                    self.counters)
        for top in self.top_level_directories:
            attempt(self, f"removing {top}",
                    functools.partial(files.remove_empty_tree, self.directory / top),
                    self.counters)
        if self.path:
            attempt(self, "removing its directory",
                    functools.partial(files.remove_empty_tree, self.directory), self.counters)


class ChunkRegistry:
    """Published chunks by (sessiond uuid, sessiond session id, chunk id)."""

    def __init__(self) -> None:
        self._chunks: dict[RegistryKey, dict[int, TraceChunk]] = {}
        self._sessions_per_uuid: dict[bytes, int] = {}

    def session_created(self, uuid: bytes) -> None:
        self._sessions_per_uuid[uuid] = self._sessions_per_uuid.get(uuid, 0) + 1

    def session_destroyed(self, uuid: bytes) -> None:
        count = self._sessions_per_uuid.get(uuid, 0) - 1
        if count <= 0:
            self._sessions_per_uuid.pop(uuid, None)
        else:
            self._sessions_per_uuid[uuid] = count

    def knows_sessiond(self, uuid: bytes) -> bool:
        return uuid in self._sessions_per_uuid

    def publish(self, key: RegistryKey, chunk: TraceChunk) -> TraceChunk:
        """The published chunk with that id (a new reference): `chunk` itself or an older twin."""
        if chunk.id is None:
            raise ChunkError("anonymous chunks are not published")
        chunks = self._chunks.setdefault(key, {})
        existing = chunks.get(chunk.id)
        if existing is not None:
            return existing.get()
        chunks[chunk.id] = chunk
        chunk.registry, chunk.registry_key = self, key
        return chunk.get()

    def find(self, key: RegistryKey, chunk_id: int) -> TraceChunk | None:
        return self._chunks.get(key, {}).get(chunk_id)

    def forget(self, chunk: TraceChunk) -> None:
        if chunk.registry_key is None or chunk.id is None:
            return
        chunks = self._chunks.get(chunk.registry_key, {})
        if chunks.get(chunk.id) is chunk:
            del chunks[chunk.id]
            if not chunks:
                del self._chunks[chunk.registry_key]
