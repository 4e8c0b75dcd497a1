//! Helpers shared by the kernel tests.
#![allow(dead_code)]

pub mod gqa_case;
