//! End-to-end tests: the real `realm-host` binary and the real engine component
//! on the real default model, compared with llama.cpp's golden outputs.
//!
//! Needs `scripts/build-component.sh`, `scripts/build-test-components.sh` and
//! `scripts/fetch-models.sh` first (`scripts/test.sh` runs them).

mod batching;
mod bench;
mod cli;
mod engine;
mod isolation;
mod openapi;
mod serve;
mod structured;
mod support;
mod tenants;
mod tools;
