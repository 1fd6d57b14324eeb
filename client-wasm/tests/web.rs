//! API-level browser tests that need no server (run by `wasm-pack test --headless --chrome`).
#![cfg(target_arch = "wasm32")]

use ackline::{protocol_version, Ackline};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn speaks_protocol_version_1() {
    assert_eq!(protocol_version(), 1);
}

async fn open_error(options: &str) -> (String, String) {
    let parsed = js_sys::JSON::parse(options).unwrap();
    let err = match Ackline::open(parsed).await {
        Ok(_) => panic!("open must fail for {options}"),
        Err(err) => err,
    };
    assert!(err.is_instance_of::<js_sys::Error>(), "errors are JS Error objects");
    let code = js_sys::Reflect::get(&err, &JsValue::from_str("code")).unwrap();
    let message = js_sys::Reflect::get(&err, &JsValue::from_str("message")).unwrap();
    (code.as_string().unwrap(), message.as_string().unwrap())
}

#[wasm_bindgen_test]
async fn bad_options_reject_with_coded_errors() {
    assert_eq!(open_error(r#"{}"#).await.0, "bad_options");
    assert_eq!(open_error(r#"{"url":"ftp://x","token":"a.b.c"}"#).await.0, "bad_url");
    assert_eq!(open_error(r#"{"url":"http://x"}"#).await.0, "bad_options");
    assert_eq!(open_error(r#"{"url":"http://x","token":"not-a-jwt"}"#).await.0, "bad_token");
    // A JWT whose payload lacks the device claim.
    let (code, message) = open_error(r#"{"url":"http://x","token":"e30.eyJzdWIiOiJhbm4ifQ.sig"}"#).await;
    assert_eq!(code, "bad_token");
    assert!(message.contains("device"), "{message}");
}
