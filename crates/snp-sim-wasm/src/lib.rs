//! wasm-bindgen bindings of [`snp_sim`]: the status page's debounce simulator runs the same
//! `snp_core::Debouncer` the filter and the shim run, compiled to `wasm32-unknown-unknown`.
//!
//! The interface is JSON in, JSON out ([`snp_sim::simulate_json`]), so the page's result can
//! be compared byte for byte with the native `snp-sim` binary's.

use wasm_bindgen::prelude::*;

/// Simulates the rollout described by `rollout_json` and returns the report as JSON.
/// Throws a JS `Error` saying what is wrong with an invalid rollout.
#[wasm_bindgen]
pub fn simulate(rollout_json: &str) -> Result<String, JsError> {
    snp_sim::simulate_json(rollout_json).map_err(|e| JsError::new(&e))
}

/// The default rollout, as JSON (the form's initial values).
#[wasm_bindgen(js_name = defaultRollout)]
pub fn default_rollout() -> String {
    serde_default()
}

fn serde_default() -> String {
    snp_sim::default_rollout_json()
}
