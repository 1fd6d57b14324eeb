// The Worker's `main` (wrangler.toml): a thin JS layer over the worker-build
// output in ./build, for the two checks that must happen before wasm is entered.
//
// 1. Oversized frames. The #[durable_object] glue of workers-rs turns every
//    WebSocket message into a Rust String/Vec (`as_string()` /
//    `Uint8Array::to_vec()`) before our handler runs, so a 30 MiB frame grows
//    wasm linear memory by 30-90 MiB, and linear memory never shrinks. Here the
//    size is read from the JS value (no copy) and an oversized frame is replaced
//    by a short marker that the Rust side answers like any oversized frame:
//    error frame `frame_too_large`, one strike toward the abuse limit.
// 2. permessage-deflate is off (wrangler.toml: no_web_socket_compression):
//    compression lets a ~31 KiB frame inflate to 31 MiB inside workerd, and
//    every client frame is under 64 KiB, so it buys nothing.

import RustWorker, { Conversation as RustConversation } from "./build/index.js";

/// protocol::limits::MAX_FRAME_BYTES (protocol/src/limits.rs).
const MAX_FRAME_BYTES = 64 * 1024;

/// Passed to the Rust handler in place of a refused frame, followed by a lower
/// bound of the frame's UTF-8 size in decimal. A NUL can never start a valid
/// frame (JSON object), so no well-formed frame is mistaken for it; a client
/// sending it by hand only earns itself the same error and strike.
const OVERSIZED_MARKER = "\u0000frame_too_large:";

/// A lower bound of the message's size in bytes, known without copying it.
/// A string of n UTF-16 units has between n and 3n UTF-8 bytes, so n is a safe
/// lower bound; when n is within the limit the Rust side checks the real bytes
/// (copying at most 3 * 64 KiB).
function sizeAtLeast(message) {
  return typeof message === "string" ? message.length : message.byteLength;
}

export class Conversation extends RustConversation {
  webSocketMessage(ws, message) {
    const atLeast = sizeAtLeast(message);
    if (atLeast > MAX_FRAME_BYTES) {
      // Always a string: the glue would turn any non-string into
      // `new Uint8Array(value)`, which for a number allocates that many bytes.
      return super.webSocketMessage(ws, OVERSIZED_MARKER + atLeast);
    }
    return super.webSocketMessage(ws, message);
  }
}

export default RustWorker;
