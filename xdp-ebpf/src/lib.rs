//! Empty on purpose: the XDP program is the `sipguard-xdp` binary target
//! (`src/main.rs`), built for `bpfel-unknown-none` by `loader/build.rs`.
#![no_std]
