//! Browser tests of the client (run by `wasm-pack test --headless --chrome`).
#![cfg(target_arch = "wasm32")]

use ackline::{protocol_version, Connection};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn speaks_protocol_version_1() {
    assert_eq!(protocol_version(), 1);
}

#[wasm_bindgen_test]
async fn unreachable_server_rejects_with_a_coded_error() {
    let on_frame = js_sys::Function::new_no_args("");
    let err = match Connection::open("ws://127.0.0.1:9/v1/conversations/x/connect".into(), on_frame).await {
        Ok(_) => panic!("connecting to a closed port must fail"),
        Err(err) => err,
    };
    let code = js_sys::Reflect::get(&err, &JsValue::from_str("code")).unwrap();
    assert_eq!(code.as_string().as_deref(), Some("connect_failed"));
    assert!(err.is_instance_of::<js_sys::Error>());
}
