//! eStargz and zstd:chunked layer formats.
