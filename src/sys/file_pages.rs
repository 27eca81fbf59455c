//! Gives back the pages of the process's read-only file mappings once
//! start-up is over.
//!
//! Code and constants are mapped from their files (the executable, libc,
//! the loader) and stay resident once touched. Start-up touches much that a
//! running daemon never runs again: argument parsing, the state files, the
//! tokio runtime's construction, the TUN and netlink set-up, the loader's
//! 0.5 MB relocation table (one entry per pointer in read-only data). And
//! the kernel maps 64 KiB around every page touched (fault-around), so each
//! of those first calls made a block of its neighbours resident too: a
//! daemon's text, read-only data and libc stood at ~5.5 MiB of its ~7 MiB.
//!
//! Once the daemon is set up, [`release`] drops every page of the
//! mappings that are read-only (`r--p`, `r-xp`), backed by a file, and hold
//! no private copy (`Anonymous: 0 kB` in `/proc/self/smaps`: no page was
//! ever written, so each page is the file's own bytes from the page cache).
//! `MADV_DONTNEED` on such a page loses nothing: the next access maps the
//! same bytes again, a minor fault. What runs from then on comes back; what
//! start-up alone needed does not. A mapping that was written — RELRO, which
//! the loader relocated before making it read-only, shows up as `r--p` but
//! holds anonymous pages — is left alone, as are writable, anonymous,
//! locked and kernel mappings (`[vdso]`).

#![allow(unsafe_code)]

use std::io;

/// One mapping that may be given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    end: usize,
    /// Bytes of it resident (`Rss:`).
    resident: usize,
}

/// A mapping of `/proc/self/smaps` while its lines are read.
#[derive(Debug)]
struct Entry {
    start: usize,
    end: usize,
    /// Read-only, private and backed by a file.
    read_only_file: bool,
    resident: usize,
    /// `None` until the `Anonymous:` line is read.
    clean: Option<bool>,
}

impl Entry {
    /// The mapping, if it may be given back.
    fn finish(self) -> Option<CleanMapping> {
        (self.read_only_file && self.clean == Some(true)).then_some(CleanMapping {
            start: self.start,
            end: self.end,
            resident: self.resident,
        })
    }
}

/// Drops the resident pages of every clean read-only file mapping
/// (`MADV_DONTNEED`). Best effort: returns how many bytes were resident
/// in them before, 0 when `/proc/self/smaps` cannot be read.
pub(crate) fn release() -> usize {
    let smaps = match std::fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => smaps,
        Err(error) => {
            tracing::debug!(%error, "file pages: /proc/self/smaps unreadable; left mapped");
            return 0;
        }
    };
    let mut released = 0;
    // Nothing resident, nothing to give back.
    for mapping in clean_mappings(&smaps)
        .into_iter()
        .filter(|mapping| mapping.resident > 0)
    {
        let len = mapping.end - mapping.start;
        // SAFETY: [start, end) is one whole mapping the kernel listed as
        // read-only, private, backed by a file and holding no anonymous
        // (written) page, so every resident page is a clean copy of the
        // file. MADV_DONTNEED on it only unmaps those pages: the next read
        // faults the same bytes back from the page cache, so references
        // into it (code, `&'static` data) stay valid.
        let rc =
            unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += mapping.resident;
        } else {
            tracing::debug!(error = %io::Error::last_os_error(), "file pages: madvise refused");
        }
    }
    tracing::debug!(bytes = released, "read-only file pages given back");
    released
}

/// The clean read-only file mappings in `smaps` (the text of
/// `/proc/self/smaps`). A mapping counts as clean only when its
/// `Anonymous:` line says 0 (no such line: not clean) and nothing of it is
/// locked or a huge page.
fn clean_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    let mut current: Option<Entry> = None;
    for line in smaps.lines() {
        if let Some(entry) = parse_header(line) {
            found.extend(current.replace(entry).and_then(Entry::finish));
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let kib = value.parse::<usize>().ok();
        match key {
            "Rss:" => entry.resident = kib.unwrap_or(0).saturating_mul(1024),
            "Anonymous:" => entry.clean = Some(entry.clean.unwrap_or(true) && kib == Some(0)),
            "Locked:" | "AnonHugePages:" if kib != Some(0) => entry.clean = Some(false),
            _ => {}
        }
    }
    found.extend(current.and_then(Entry::finish));
    found
}

/// A mapping's header line (`start-end perms offset dev inode [path]`);
/// `None` for any other line.
fn parse_header(line: &str) -> Option<Entry> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    // Field lines ("Rss:  4 kB") have no '-' range; a header has 4 more
    // fields, then the path (absent for anonymous memory).
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("");
    Some(Entry {
        start,
        end,
        read_only_file: end > start && matches!(perms, "r--p" | "r-xp") && path.starts_with('/'),
        resident: 0,
        clean: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One smaps entry: the header, then the fields that matter here.
    fn entry(
        range: &str,
        perms: &str,
        path: &str,
        rss: u32,
        anonymous: u32,
        locked: u32,
    ) -> String {
        format!(
            "{range} {perms} 00000000 fd:00 1234 {path}\n\
             Size:                100 kB\n\
             Rss:                 {rss} kB\n\
             Anonymous:           {anonymous} kB\n\
             AnonHugePages:       0 kB\n\
             Locked:              {locked} kB\n\
             VmFlags: rd mr mw me\n"
        )
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_chosen() {
        let smaps = [
            entry("1000-3000", "r--p", "/usr/bin/agentnet", 8, 0, 0),
            entry("3000-9000", "r-xp", "/usr/bin/agentnet", 24, 0, 0),
            // RELRO: relocated by the loader, then made read-only.
            entry("9000-a000", "r--p", "/usr/bin/agentnet", 4, 4, 0),
            entry("a000-b000", "rw-p", "/usr/bin/agentnet", 4, 4, 0),
            entry("b000-c000", "r--p", "", 4, 0, 0),
            entry("c000-d000", "r-xp", "[vdso]", 4, 0, 0),
            entry("d000-e000", "r-xp", "/usr/lib/libc.so.6", 4, 0, 4),
            entry("e000-f000", "r--s", "/dev/shm/x", 4, 0, 0),
            entry("f000-10000", "r-xp", "/usr/lib/libc.so.6", 0, 0, 0),
        ]
        .concat();
        assert_eq!(
            clean_mappings(&smaps),
            vec![
                CleanMapping {
                    start: 0x1000,
                    end: 0x3000,
                    resident: 8192
                },
                CleanMapping {
                    start: 0x3000,
                    end: 0x9000,
                    resident: 24576
                },
                CleanMapping {
                    start: 0xf000,
                    end: 0x10000,
                    resident: 0
                },
            ]
        );
    }

    #[test]
    fn a_path_with_spaces_still_counts_as_a_file() {
        let smaps = entry(
            "1000-2000",
            "r-xp",
            "/opt/my tools/agentnet (deleted)",
            4,
            0,
            0,
        );
        assert_eq!(clean_mappings(&smaps).len(), 1);
    }

    #[test]
    fn a_missing_or_unreadable_anonymous_count_is_not_taken_for_clean() {
        let unreadable = "1000-2000 r-xp 00000000 fd:00 1 /bin/x\nRss: 4 kB\nAnonymous: many kB\n";
        assert!(clean_mappings(unreadable).is_empty());
        let missing = "1000-2000 r-xp 00000000 fd:00 1 /bin/x\nRss: 4 kB\nLocked: 0 kB\n";
        assert!(clean_mappings(missing).is_empty());
        // Locked before Anonymous still counts.
        let locked = "1000-2000 r-xp 00000000 fd:00 1 /bin/x\nLocked: 4 kB\nAnonymous: 0 kB\n";
        assert!(clean_mappings(locked).is_empty());
    }

    #[test]
    fn this_process_keeps_its_code_and_constants() {
        static TABLE: [u8; 64 * 1024] = {
            let mut table = [0u8; 64 * 1024];
            let mut i = 0;
            while i < table.len() {
                table[i] = (i % 251) as u8;
                i += 1;
            }
            table
        };
        let sum = |bytes: &[u8]| bytes.iter().map(|&byte| u64::from(byte)).sum::<u64>();
        let before = sum(std::hint::black_box(&TABLE[..]));
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        assert!(
            !clean_mappings(&smaps).is_empty(),
            "the test binary's text is a clean read-only file mapping"
        );
        assert!(release() > 0, "something was resident to give back");
        // The constants and the code come back from the file unchanged.
        assert_eq!(sum(std::hint::black_box(&TABLE[..])), before);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = clean_mappings(&text);
        }

        #[test]
        fn headers_with_any_range_never_panic(start in any::<u64>(), end in any::<u64>(), perms in "[r-][w-][x-][ps]") {
            let smaps = entry(&format!("{start:x}-{end:x}"), &perms, "/x", 4, 0, 0);
            let found = clean_mappings(&smaps);
            prop_assert!(found.iter().all(|mapping| mapping.end > mapping.start));
        }
    }
}
