//! Preheat jobs: the request contract ([`args`]), image resolution ([`image`]), creation
//! limits ([`ratelimit`]) and the durable runner ([`runner`]).

pub mod args;
pub mod image;
pub mod ratelimit;
pub mod runner;
