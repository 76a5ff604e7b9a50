//! Manager hardening (issue 11, item 6), each against a manager started in this process on
//! loopback ports: sign-in limits, the preheat destination policy, secrets, the job attempt
//! cap, security headers and TLS; and members joining through the certificate service (issue
//! 11, item 3).

mod harness;

mod destinations;
mod join;
mod secrets;
mod signin;
mod web;
