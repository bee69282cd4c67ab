//! cargo fuzz target: everything the hook parses from outside (see
//! `hami_oci_hook::fuzz`). `hack/fuzz-hook.sh SECONDS` runs it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hami_oci_hook::fuzz::hook_input(data);
});
