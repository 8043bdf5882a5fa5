//! Strait's L7/L4 filter API and native filters.
//!
//! Issue 2 (the core proxy) needs only the terminal router filter, which lives in the
//! proxy crate (`strait::router`) because it owns pools and clusters. This crate takes
//! the filter trait and the first native filters (fault injection, header mutation,
//! the proxy-wasm host) with the issues that bring them; until then it is empty on
//! purpose rather than holding an interface with no user.
#![forbid(unsafe_code)]
