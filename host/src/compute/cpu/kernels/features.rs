//! Which vector instructions the CPU kernels may use, detected once.
//! `REALM_CPU_ISA` (`portable`, `avx2` or `avx512`) caps the level, so that
//! a lower path can be run and measured on a machine that has a higher one.

use std::sync::OnceLock;

/// The kernel paths, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The portable loops only.
    Portable,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX2 plus AVX-512 F, BW, VL and VNNI (Zen 4, Ice Lake and later).
    Avx512,
}

impl Isa {
    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(Self::Portable),
            "avx2" => Some(Self::Avx2),
            "avx512" => Some(Self::Avx512),
            _ => None,
        }
    }
}

/// What this CPU has.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The level the kernels run at: what the CPU has, capped by `REALM_CPU_ISA`.
/// An unknown value is ignored with a warning.
pub fn level() -> Isa {
    static LEVEL: OnceLock<Isa> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let found = detected();
        match std::env::var("REALM_CPU_ISA") {
            Ok(name) => match Isa::parse(&name) {
                Some(cap) => found.min(cap),
                None => {
                    tracing::warn!(value = %name, "REALM_CPU_ISA is not portable, avx2 or avx512; ignored");
                    found
                }
            },
            Err(_) => found,
        }
    })
}

/// Whether the AVX2 kernels may run (AVX2, FMA and F16C).
pub fn has_avx2() -> bool {
    level() >= Isa::Avx2
}

/// Whether the AVX-512 VNNI variants may run as well.
pub fn has_avx512() -> bool {
    level() >= Isa::Avx512
}

/// Asks for `bytes` in the cache ahead of their use (one prefetch a line).
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for line in bytes.chunks(64) {
            // SAFETY: a prefetch reads nothing architecturally; the address is in `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// For kernel tests that compare a vector path with the portable loop: true
/// when the path can run here. When it cannot, the test says so on stderr,
/// and fails instead where `REALM_REQUIRE_SIMD` (`avx2` or `avx512`) says
/// the machine is expected to run that path.
#[cfg(test)]
pub fn can_test(needed: Isa, test: &str) -> bool {
    if level() >= needed {
        return true;
    }
    let message = format!("{test}: skipped, this CPU runs {:?} kernels, not {needed:?}", level());
    if let Ok(required) = std::env::var("REALM_REQUIRE_SIMD") {
        let required = Isa::parse(&required)
            .unwrap_or_else(|| panic!("REALM_REQUIRE_SIMD={required}: not portable, avx2 or avx512"));
        assert!(
            needed > required,
            "{message}, and REALM_REQUIRE_SIMD requires {required:?}"
        );
    }
    eprintln!("{message}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_names_parse_and_order() {
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(level() <= detected());
    }
}
