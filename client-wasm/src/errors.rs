//! Errors as JS sees them: `Error` objects with a stable `code` property.

use serde::Serialize;
use wasm_bindgen::JsValue;

/// A JS `Error` with `message` and a stable machine-readable `code`.
pub fn js_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
    err.into()
}

/// A plain JS object (JSON-compatible: numbers, not BigInts; maps as objects).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}
