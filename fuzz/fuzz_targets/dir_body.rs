//! Fuzz target `dir_body`: see `cairn_fuzz::targets::dir_body`.
#![no_main]

#[global_allocator]
static ALLOC: cairn_fuzz::alloc::CappedAlloc = cairn_fuzz::alloc::CappedAlloc::STRICT;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::guarded(cairn_fuzz::targets::dir_body, data);
});
