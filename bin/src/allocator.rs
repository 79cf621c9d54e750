//! The binaries' allocator: mimalloc, set up to give memory back soon after a burst.
//!
//! Measured against glibc's allocator in docs/performance.md ("mimalloc in the binaries"):
//! reads by id are faster, and a burst of large request bodies peaks lower and ends closer to
//! the idle size. Embedders of the library crates choose their own allocator; this one is
//! only the reference binaries'.
//!
//! One of the workspace's two places allowed unsafe code (see Cargo.toml): calls into
//! mimalloc and libc before `main`, each with its SAFETY note.
#![allow(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Options set before `main`: mimalloc reserves its first arena before `main` starts, and
/// an option set in `main` would only reach arenas reserved later.
#[cfg(target_os = "linux")]
mod options {
    use libmimalloc_sys::{mi_option_set, mi_option_t};
    use std::ffi::CStr;

    /// The options set to 0, by mimalloc 3's number (`mi_option_e` in its header; the sys
    /// crate names only some) and the variable that overrides each.
    pub(super) const ZEROED: [(mi_option_t, &CStr); 2] = [
        (4, c"MIMALLOC_ARENA_EAGER_COMMIT"),
        (15, c"MIMALLOC_PURGE_DELAY"),
    ];

    #[used]
    #[link_section = ".init_array"]
    static CONFIGURE_BEFORE_MAIN: extern "C" fn() = configure;

    /// Commits memory when it is first used rather than a whole arena up front, and gives freed
    /// pages back at once rather than after a second. With mimalloc's defaults a `dsf dev up`
    /// idled at 39 MiB of anonymous memory instead of 12, and 30 s after a burst it was
    /// 30–45 MiB higher than with these two. An operator's `MIMALLOC_ARENA_EAGER_COMMIT` or
    /// `MIMALLOC_PURGE_DELAY` still wins.
    extern "C" fn configure() {
        for (option, variable) in ZEROED {
            // SAFETY: getenv reads the environment the process started with (nothing else runs
            // this early), and mi_option_set only stores a number in mimalloc's option table.
            // Neither allocates: the allocator is not set up yet.
            unsafe {
                if libc::getenv(variable.as_ptr()).is_null() {
                    mi_option_set(option, 0);
                }
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use libmimalloc_sys::mi_option_get;

    /// The options hold from the start of the process, as the first arena needs them.
    #[test]
    fn options_are_set_before_main() {
        // SAFETY: returns a number compiled into mimalloc.
        let version = unsafe { libmimalloc_sys::mi_version() };
        assert_eq!(version / 10000, 3, "the option numbers are mimalloc 3's");
        for (option, variable) in super::options::ZEROED {
            let variable = variable.to_str().unwrap_or_default();
            if std::env::var_os(variable).is_none() {
                // SAFETY: reads a number from mimalloc's option table.
                assert_eq!(unsafe { mi_option_get(option) }, 0, "{variable}");
            }
        }
    }
}
