//! Preheat jobs: the request contract ([`args`]), image resolution ([`image`]), the stored
//! and answered shapes ([`model`]), creation limits ([`ratelimit`]) and the durable runner
//! ([`runner`]).

pub mod args;
pub mod destination;
pub mod image;
pub mod model;
pub mod preflight;
pub mod ratelimit;
pub mod runner;
