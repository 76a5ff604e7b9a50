//! The piece store.
