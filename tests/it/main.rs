//! Integration tests: real sockets, real TLS, a recording backend.
// The harness is test code: failing loudly on a broken fixture is the point.
#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod support;

mod acme;
mod binary;
mod check;
mod deploy;
mod limits;
mod relay;
mod routing;
mod service;
mod shutdown;
mod tls;
mod transparency;
