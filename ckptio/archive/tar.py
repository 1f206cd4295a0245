"""The tar member format moved to ckptio/store/tar.py (storage); its names stay importable from here."""

from ..store.tar import (  # noqa: F401
    BLOCK,
    DIRECTORY,
    MAX_META,
    NO_DATA_TYPES,
    OTHER,
    RECORD,
    REGULAR,
    Member,
    TarHeader,
    clean_name,
    decode_header,
    encode_header,
    parse_pax,
)
