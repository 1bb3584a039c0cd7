//! Fuzz targets for every decoder of untrusted bytes in `cairn-core` and `cairn-dir`, and what
//! they share with the stable smoke runner (`tests/smoke.rs`).
//!
//! Each target's logic is a plain `fn(&[u8])` in [`targets`]; the libFuzzer binaries under
//! `fuzz_targets/` are one line each around it, and the smoke runner calls the same functions
//! on the seed corpus ([`seeds`]) and on random and mutated inputs ([`mutate`]), so everything
//! builds and runs on stable Rust. Every call goes through [`guarded`], which arms the
//! allocation watch of [`alloc`]. See `fuzz/README.md`.

pub mod alloc;
pub mod mutate;
pub mod seeds;
pub mod targets;

/// A named fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The binary's name and the seed directory's name.
    pub name: &'static str,
    /// The target's logic.
    pub run: fn(&[u8]),
}

/// Every target, in the order the smoke runner runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "cap",
        run: targets::cap,
    },
    Target {
        name: "invite_code",
        run: targets::invite_code,
    },
    Target {
        name: "manifest",
        run: targets::manifest,
    },
    Target {
        name: "manifest_keys",
        run: targets::manifest_keys,
    },
    Target {
        name: "chunk_header",
        run: targets::chunk_header,
    },
    Target {
        name: "verify_header",
        run: targets::verify_header,
    },
    Target {
        name: "wire_hello",
        run: targets::wire_hello,
    },
    Target {
        name: "wire_request",
        run: targets::wire_request,
    },
    Target {
        name: "wire_response",
        run: targets::wire_response,
    },
    Target {
        name: "wire_join_request",
        run: targets::wire_join_request,
    },
    Target {
        name: "wire_join_response",
        run: targets::wire_join_response,
    },
    Target {
        name: "wire_frames",
        run: targets::wire_frames,
    },
    Target {
        name: "decode_blob",
        run: targets::decode_blob_target,
    },
    Target {
        name: "payload",
        run: targets::payload,
    },
    Target {
        name: "member_cert",
        run: targets::member_cert,
    },
    Target {
        name: "dir_version",
        run: targets::dir_version,
    },
    Target {
        name: "dir_body",
        run: targets::dir_body,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// Runs `target` on `data` with the allocation watch armed; returns what it cost in heap.
/// Under [`alloc::CappedAlloc::STRICT`], going over [`alloc::limit_for`]`(data.len())` (in one
/// allocation or in live heap) aborts the process instead.
pub fn guarded(target: fn(&[u8]), data: &[u8]) -> alloc::Usage {
    alloc::begin(data.len());
    target(data);
    alloc::end()
}

/// Entry point of the engine binaries: runs the target called `name` through [`guarded`].
pub fn run_one(name: &str, data: &[u8]) {
    match target(name) {
        Some(t) => {
            guarded(t.run, data);
        }
        None => panic!("no fuzz target called {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_has_a_target_and_runs_clean() {
        for seed in seeds::all() {
            let t = target(seed.target).expect("seed of a known target");
            (t.run)(&seed.bytes);
        }
    }

    /// The seeds reach the decoders' success paths (not only their first error).
    #[test]
    fn seeds_are_accepted_by_their_decoders() {
        use cairn_core::wire::{self, Hello, JoinRequest, JoinResponse, Request, Response};
        for seed in seeds::all() {
            let b = &seed.bytes[..];
            let ok = match seed.target {
                "cap" => String::from_utf8_lossy(b)
                    .parse::<cairn_core::Cap>()
                    .is_ok(),
                "invite_code" if seed.name.starts_with("text") => String::from_utf8_lossy(b)
                    .parse::<cairn_core::wire::InviteCode>()
                    .is_ok(),
                "manifest" => cairn_core::Manifest::decode(b).is_ok(),
                "chunk_header" => cairn_core::ChunkHeader::decode(b).is_ok(),
                "wire_hello" => wire::decode::<Hello>(b).is_ok(),
                "wire_request" => wire::decode::<Request>(b).is_ok(),
                "wire_response" => wire::decode::<Response>(b).is_ok(),
                "wire_join_request" => wire::decode::<JoinRequest>(b).is_ok(),
                "wire_join_response" => wire::decode::<JoinResponse>(b).is_ok(),
                "member_cert" => {
                    postcard::from_bytes::<cairn_core::cert::MemberCert>(b).is_ok_and(|c| {
                        // Checked at its own issue time: valid then, by construction.
                        c.verify(&targets::grid_key().grid_id(), &c.node(), c.issued_at())
                            .is_ok()
                    })
                }
                "dir_version" => cairn_dir::Version::decode(b).is_ok_and(|v| {
                    seed.name.starts_with("foreign")
                        || v.open(&targets::dir_cap().read_cap()).is_ok()
                }),
                "dir_body" => postcard::from_bytes::<cairn_dir::VersionBody>(b).is_ok(),
                "payload" => {
                    let len = u32::from_le_bytes([b[0], b[1], b[2], 0]) as usize;
                    cairn_core::compress::decode_payload(&b[3..], len).is_ok()
                }
                _ => true,
            };
            assert!(
                ok,
                "seed {}/{} is refused by its decoder",
                seed.target, seed.name
            );
        }
    }

    #[test]
    fn every_target_has_a_seed() {
        let seeds = seeds::all();
        for t in TARGETS {
            assert!(
                seeds.iter().any(|s| s.target == t.name),
                "{} has no seed",
                t.name
            );
        }
    }
}
