//! The MQTT gateway's packet decoding path on arbitrary bytes: version probe,
//! MQTT 3.1.1 / 5.0 codec, translation to the gateway's own packet form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = onramp_gateway::decode_all(data, 64 * 1024);
});
