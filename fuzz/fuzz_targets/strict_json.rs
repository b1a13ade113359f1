//! `tessera::http::extract::parse_json` (the strict JSON body parser every JSON route uses)
//! on any bytes, for the public request body types: a value or a 400, never anything else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tessera::{
    http::{error::ApiError, extract::parse_json},
    keys::{ApiPatch, KeyPatch, NewApi, NewKey, RotateKey, VerifyRequest},
};

fuzz_target!(|data: &[u8]| {
    check::<NewKey>(data);
    check::<KeyPatch>(data);
    check::<RotateKey>(data);
    check::<NewApi>(data);
    check::<ApiPatch>(data);
    check::<VerifyRequest>(data);
});

fn check<T: DeserializeOwned>(data: &[u8]) {
    match parse_json::<T>(data) {
        Ok(_) => {}
        // `field` may be empty: `{"": null}` names an unknown field "".
        Err(ApiError::BadRequest { message, .. }) => assert!(!message.is_empty()),
        Err(other) => panic!("parse_json answered {other:?}, not a 400"),
    }
}
