//! Integration tests: real sockets, real TLS, a recording backend.
#![allow(unreachable_pub)]

mod support;

mod limits;
mod routing;
mod transparency;
