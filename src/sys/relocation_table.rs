//! Gives back the pages of the executable's relocation table once the
//! process runs.
//!
//! A position-independent executable carries one `R_X86_64_RELATIVE`-style
//! entry (24 bytes) for every pointer in its read-only data — vtables,
//! `&'static str` in statics, panic locations, tracing call sites: ~21,000
//! entries, 0.5 MB in `.rela.dyn` for agentnet. The dynamic loader reads
//! the whole table once, before `main`, and nothing reads it again, yet its
//! pages stay mapped: half a MiB of a daemon's ~8 MiB resident set.
//! (Packed relocations, `-z pack-relative-relocs`, would shrink the table
//! itself but make the binary require glibc ≥ 2.36.)
//!
//! The table's place comes from the executable's own file (its dynamic
//! section: `DT_RELA`, `DT_RELASZ`), so nothing depends on whether the
//! loader adjusted the in-memory copy. Only whole pages inside the table are
//! released, and only when the segment holding it is read-only: such pages
//! are clean copies of the file, and a later read (a debugger, a
//! backtrace) simply faults them back in from the page cache. Anything
//! unexpected (no dynamic section, packed relocations only, a writable
//! segment, an unreadable `/proc/self/exe`) leaves everything as it is.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::core::wire::{u32_at, u64_at};

/// `PT_LOAD`, `PT_DYNAMIC`, `PT_PHDR` program header types.
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
/// Writable segment flag.
const PF_W: u32 = 2;
/// Dynamic tags: end, relocation table address and size.
const DT_NULL: u64 = 0;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
/// Bounds on what is read from the file (a sane executable is far below).
const MAX_PROGRAM_HEADERS: usize = 256;
const MAX_DYNAMIC_ENTRIES: usize = 4096;

/// One program header of a 64-bit ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    file_size: u64,
    mem_size: u64,
}

/// Where the relocation table sits, relative to the load address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Table {
    /// Its virtual address in the file's layout.
    vaddr: u64,
    /// Its length in bytes.
    len: u64,
    /// The `PT_PHDR` address in the file's layout (to find the load bias).
    program_headers_vaddr: u64,
}

/// Releases the relocation table's whole pages (`MADV_DONTNEED`). Best
/// effort: returns how many bytes were given back, 0 when there was
/// nothing safe to do.
pub(crate) fn release() -> usize {
    let table = File::open("/proc/self/exe")
        .map(io::BufReader::new)
        .and_then(|mut exe| find(&mut exe));
    match table {
        Ok(Some(table)) => {
            let released = give_back(table);
            tracing::debug!(bytes = released, "relocation table given back");
            released
        }
        Ok(None) => 0,
        Err(error) => {
            tracing::debug!(%error, "relocation table: left mapped");
            0
        }
    }
}

fn give_back(table: Table) -> usize {
    // SAFETY: `getauxval` only reads the auxiliary vector the kernel gave
    // the process; it has no preconditions.
    let program_headers = unsafe { libc::getauxval(libc::AT_PHDR) };
    let Some(bias) = program_headers.checked_sub(table.program_headers_vaddr) else {
        return 0;
    };
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .filter(|size| size.is_power_of_two())
        .unwrap_or(4096);
    // Whole pages only: round the start up and the end down.
    let table_start = bias.checked_add(table.vaddr);
    let table_end = table_start.and_then(|start| start.checked_add(table.len));
    let (Some(start), Some(end)) = (
        table_start.and_then(|start| start.checked_next_multiple_of(page)),
        table_end.map(|end| end & !(page - 1)),
    ) else {
        return 0;
    };
    if end <= start {
        return 0;
    }
    let len = (end - start) as usize;
    // SAFETY: [start, end) is made of whole pages inside the executable's
    // relocation table, which `find` checked lies in a read-only segment
    // mapped from the file. No Rust reference points into it (only the
    // loader ever read it, before `main`). Dropping clean private file
    // pages loses nothing: a later access maps the same bytes again from
    // the file.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc == 0 {
        len
    } else {
        tracing::debug!(error = %io::Error::last_os_error(), "relocation table: madvise refused");
        0
    }
}

/// Reads the executable `file` and says where its `RELA` relocation table
/// is, if it has one inside a read-only loaded segment.
fn find(file: &mut (impl Read + Seek)) -> io::Result<Option<Table>> {
    let mut header = [0u8; 64];
    file.read_exact(&mut header)?;
    // 64-bit, little-endian ELF only (the targets agentnet builds for).
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let phoff = u64_at(&header, 0x20);
    let phentsize = usize::from(u16_at(&header, 0x36));
    let phnum = usize::from(u16_at(&header, 0x38));
    if phentsize < 56 || phnum > MAX_PROGRAM_HEADERS {
        return Ok(None);
    }
    let mut raw = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut raw)?;
    let segments: Vec<Segment> = raw
        .chunks_exact(phentsize)
        .map(|entry| Segment {
            kind: u32_at(entry, 0),
            flags: u32_at(entry, 4),
            offset: u64_at(entry, 8),
            vaddr: u64_at(entry, 16),
            file_size: u64_at(entry, 32),
            mem_size: u64_at(entry, 40),
        })
        .collect();
    let (Some(phdr), Some(dynamic)) = (
        segments.iter().find(|s| s.kind == PT_PHDR),
        segments.iter().find(|s| s.kind == PT_DYNAMIC),
    ) else {
        return Ok(None);
    };
    let entries = usize::try_from(dynamic.file_size / 16)
        .unwrap_or(usize::MAX)
        .min(MAX_DYNAMIC_ENTRIES);
    let mut raw = vec![0u8; entries * 16];
    file.seek(SeekFrom::Start(dynamic.offset))?;
    file.read_exact(&mut raw)?;
    let (mut rela, mut rela_len) = (None, None);
    for entry in raw.chunks_exact(16) {
        match u64_at(entry, 0) {
            DT_NULL => break,
            DT_RELA => rela = Some(u64_at(entry, 8)),
            DT_RELASZ => rela_len = Some(u64_at(entry, 8)),
            _ => {}
        }
    }
    let (Some(vaddr), Some(len)) = (rela, rela_len) else {
        return Ok(None);
    };
    let Some(end) = vaddr.checked_add(len) else {
        return Ok(None);
    };
    let read_only = segments.iter().any(|s| {
        s.kind == PT_LOAD
            && s.flags & PF_W == 0
            && s.vaddr <= vaddr
            && s.vaddr
                .checked_add(s.file_size.min(s.mem_size))
                .is_some_and(|e| end <= e)
    });
    Ok(read_only.then_some(Table {
        vaddr,
        len,
        program_headers_vaddr: phdr.vaddr,
    }))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// A minimal 64-bit ELF image: PT_PHDR, one PT_LOAD with `load_flags`
    /// covering the first 64 KiB, and PT_DYNAMIC with DT_RELA at 0x1000,
    /// DT_RELASZ `rela_len`.
    fn image(load_flags: u32, rela_len: u64) -> Vec<u8> {
        let mut elf = vec![0u8; 0x400];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let headers = [
            (PT_PHDR, 4, 64u64, 64u64, 3 * 56u64),
            (PT_LOAD, load_flags, 0, 0, 0x10000),
            (PT_DYNAMIC, 6, 0x300, 0x300, 3 * 16),
        ];
        for (i, (kind, flags, offset, vaddr, size)) in headers.into_iter().enumerate() {
            let at = 64 + i * 56;
            elf[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            elf[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            elf[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            elf[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            elf[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        }
        for (i, (tag, value)) in [(DT_RELA, 0x1000u64), (DT_RELASZ, rela_len), (DT_NULL, 0)]
            .into_iter()
            .enumerate()
        {
            let at = 0x300 + i * 16;
            elf[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        }
        elf
    }

    #[test]
    fn the_table_is_found_only_in_a_read_only_segment() {
        let table = find(&mut Cursor::new(image(4, 0x3000))).expect("parse");
        assert_eq!(
            table,
            Some(Table {
                vaddr: 0x1000,
                len: 0x3000,
                program_headers_vaddr: 64
            })
        );
        // Writable: its pages may hold the process's own writes.
        assert_eq!(
            find(&mut Cursor::new(image(6, 0x3000))).expect("parse"),
            None
        );
        // Past the segment's end.
        assert_eq!(
            find(&mut Cursor::new(image(4, 0x20000))).expect("parse"),
            None
        );
    }

    #[test]
    fn other_files_are_left_alone() {
        let mut not_elf = image(4, 0x3000);
        not_elf[0] = 0;
        assert_eq!(find(&mut Cursor::new(not_elf)).expect("parse"), None);
        let mut big_endian = image(4, 0x3000);
        big_endian[5] = 2;
        assert_eq!(find(&mut Cursor::new(big_endian)).expect("parse"), None);
        assert!(find(&mut Cursor::new(image(4, 0x3000)[..100].to_vec())).is_err());
    }

    #[test]
    fn this_test_binary_has_a_table_the_loader_already_used() {
        let mut exe = File::open("/proc/self/exe").expect("own executable");
        let Some(table) = find(&mut exe).expect("parse") else {
            // A static or packed-relocation build has no RELA table.
            return;
        };
        assert!(table.len > 0 && table.len % 24 == 0, "{table:?}");
        // SAFETY: reads this process's own auxiliary vector.
        let bias = unsafe { libc::getauxval(libc::AT_PHDR) } - table.program_headers_vaddr;
        let len = usize::try_from(table.len).expect("fits");
        let read = || {
            // SAFETY: the table is mapped read-only for the process's whole
            // life; `find` checked it lies inside a loaded segment.
            unsafe { std::slice::from_raw_parts((bias + table.vaddr) as *const u8, len) }.to_vec()
        };
        let before = read();
        let released = give_back(table);
        assert!(released > 0 || len < 2 * 4096, "{table:?}");
        assert!(released <= len);
        // The pages come back from the file with the same bytes.
        assert_eq!(read(), before);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = find(&mut Cursor::new(bytes));
        }

        #[test]
        fn corrupted_images_never_panic(at in 0usize..0x400, byte in any::<u8>()) {
            let mut elf = image(4, 0x3000);
            elf[at] = byte;
            let _ = find(&mut Cursor::new(elf));
        }
    }
}
