//! Jobs: the request contract ([`args`] for preheats, [`task_args`] for the task jobs), where
//! preheat URLs may point ([`destination`], checked at creation and again by [`preflight`]
//! when a job runs), image resolution ([`image`]), the stored and answered shapes ([`model`]),
//! creation limits ([`ratelimit`]), the durable runner ([`runner`], with [`progress`] and
//! [`schedulers`]), get_task and delete_task ([`task_runner`]) and the synchronous
//! get_image_distribution ([`distribution`]).

pub mod args;
pub mod destination;
pub mod distribution;
pub mod image;
pub mod model;
pub mod preflight;
pub mod progress;
pub mod ratelimit;
pub mod runner;
pub mod schedulers;
pub mod task_args;
pub mod task_runner;
