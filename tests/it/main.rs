//! Integration tests: the real binary against real servers on 127.0.0.1.

mod robustness;
mod support;
mod verify;
