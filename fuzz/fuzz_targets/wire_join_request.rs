//! Fuzz target `wire_join_request`: see `cairn_fuzz::targets::wire_join_request`.
#![no_main]

#[global_allocator]
static ALLOC: cairn_fuzz::alloc::CappedAlloc = cairn_fuzz::alloc::CappedAlloc::STRICT;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::guarded(cairn_fuzz::targets::wire_join_request, data);
});
