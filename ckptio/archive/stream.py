"""The forward archive stream moved to ckptio/store/archive.py (storage); its names stay importable from here."""

from ..store.archive import READ_CHUNK, SKIP_CHUNK, ZSTD_MAGIC, ArchiveStore, ArchiveStream, MemberSource  # noqa: F401
