//! Preheat jobs: the request contract ([`args`]), where their URLs may point
//! ([`destination`], checked at creation and again by [`preflight`] when a job runs), image
//! resolution ([`image`]), the stored and answered shapes ([`model`]), creation limits
//! ([`ratelimit`]) and the durable runner ([`runner`]).

pub mod args;
pub mod destination;
pub mod image;
pub mod model;
pub mod preflight;
pub mod ratelimit;
pub mod runner;
