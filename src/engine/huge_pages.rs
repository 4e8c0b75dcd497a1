//! Transparent huge pages for the weights a decode step streams.
//!
//! Every decode step reads all the decoder's weights (4 GB on the 7B) once. With 4 KiB pages that is a
//! million TLB misses per token; with 2 MiB pages, two thousand. Linux backs memory with small pages unless
//! told otherwise (`transparent_hugepage=madvise`, the common default), and backs file mappings (ORT's
//! mapping of a weight file) with small pages only. Two tools: [`HugePageCopy`] reads a file's bytes into
//! anonymous memory that is on huge pages from the first write (what [`super::shared_weights`] lends ORT),
//! and, after the sessions are built, [`back_with_huge_pages`] asks the kernel to back each large, resident
//! anonymous mapping (MLAS's prepacked copies, arenas) with huge pages now (`MADV_HUGEPAGE` then
//! `MADV_COLLAPSE`, Linux 6.1+). Both best effort, the contents unchanged; a kernel that refuses leaves the
//! small pages (docs/PERFORMANCE.md#huge-pages).

/// What [`back_with_huge_pages`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collapsed {
    /// Mappings large and resident enough to ask for.
    pub asked: usize,
    /// Of those, the ones the kernel collapsed into huge pages.
    pub collapsed: usize,
    /// Bytes in the collapsed mappings.
    pub bytes: u64,
    /// The errno of the last refusal, if any (`EAGAIN`/`ENOMEM`: no huge page free; `EINVAL`: huge
    /// pages off for this process or this kind of mapping).
    pub refused: Option<i32>,
}

/// One mapping of `/proc/self/smaps`: its range and how much of it is resident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: usize,
    pub end: usize,
    pub readable: bool,
    /// `[stack]`, `[heap]`, a file path, or empty (anonymous).
    pub name: String,
    pub rss: u64,
    /// Bytes of it backed by anonymous huge pages (`AnonHugePages`).
    pub anon_huge: u64,
}

/// The mappings of an smaps text (each header line, then its `Key: value kB` lines).
pub(crate) fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or("");
            // offset, device, inode, then the name (which may hold spaces).
            let name = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping { start, end, readable: perms.starts_with('r'), name, rss: 0, anon_huge: 0 });
        } else if let Some(m) = out.last_mut() {
            let mut kib = || fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            match first {
                "Rss:" => m.rss = kib(),
                "AnonHugePages:" => m.anon_huge = kib(),
                _ => {}
            }
        }
    }
    out
}

/// Whether a mapping is worth huge pages: at least `min_bytes`, readable, not the stack or a kernel
/// page, and at least 90 % resident (collapsing fills the holes of a range, which would grow the
/// resident memory of a sparsely used one).
pub(crate) fn wanted(m: &Mapping, min_bytes: u64) -> bool {
    let len = (m.end - m.start) as u64;
    len >= min_bytes && m.readable && !m.name.starts_with("[s") && !m.name.starts_with("[v") && m.rss * 10 >= len * 9
}

/// Mappings of at least this size are asked for huge pages: the 7B's weights sit in allocations of tens
/// of MB and more; smaller ones are left as they are.
pub const MIN_BYTES: u64 = 16 << 20;

/// Asks the kernel to back this process's large resident mappings (at least `min_bytes`) with huge
/// pages now. Best effort: nothing is changed where the kernel has no transparent huge pages or
/// refuses (`transparent_hugepage=never`, a kernel before 6.1, memory too fragmented).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn back_with_huge_pages(min_bytes: u64) -> Collapsed {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else { return Collapsed::default() };
    let mut done = Collapsed::default();
    for m in parse_smaps(&text).iter().filter(|m| wanted(m, min_bytes)) {
        done.asked += 1;
        let (addr, len) = (m.start as *mut libc::c_void, m.end - m.start);
        // SAFETY: a range of this process's own address space as the kernel listed it just now; both
        // advices keep its contents (MADV_COLLAPSE copies them into huge pages). A range unmapped since
        // the listing makes madvise fail with ENOMEM, which is ignored.
        let ok = unsafe {
            libc::madvise(addr, len, libc::MADV_HUGEPAGE);
            libc::madvise(addr, len, libc::MADV_COLLAPSE) == 0
        };
        if ok {
            done.collapsed += 1;
            done.bytes += len as u64;
        } else {
            done.refused = std::io::Error::last_os_error().raw_os_error();
        }
    }
    done
}

/// Not Linux with glibc: nothing to ask.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn back_with_huge_pages(_min_bytes: u64) -> Collapsed {
    Collapsed::default()
}

/// A file's bytes in anonymous memory that the kernel backs with huge pages as it is filled
/// (`MADV_HUGEPAGE` before the first write, the start 2 MiB aligned); unmapped when dropped.
///
/// ORT maps a graph's external data file privately, and Linux backs file mappings with small pages only
/// (`MADV_COLLAPSE` refuses them with `EINVAL`). st's int4 kernels read the decoder's weights in place
/// from ORT's initializers, so a decode step walked 4 KiB pages over 3.4 GB on the 7B; handed to ORT as the
/// file's contents (`AddExternalInitializersFromMemory`), the same weights sit on 2 MiB pages.
pub struct HugePageCopy {
    /// The whole anonymous mapping (2 MiB longer than the data, for the alignment).
    base: *mut u8,
    map_len: usize,
    /// The copy's first byte: `base` rounded up to 2 MiB.
    data: *mut u8,
    len: usize,
}

// SAFETY: the copy owns its mapping; after `read` it is only read (through `as_ptr`), from any thread.
unsafe impl Send for HugePageCopy {}
// SAFETY: as above, shared reads only.
unsafe impl Sync for HugePageCopy {}

/// Transparent huge pages' size on x86-64 and (4 KiB-page) AArch64.
const HUGE_PAGE: usize = 2 << 20;

impl HugePageCopy {
    /// A copy of `path` holding the byte ranges `ranges` (offset, length; within the file) at their
    /// offsets; the rest of the copy is never touched, so it takes no memory. `Ok(None)` where this process
    /// gets no transparent huge pages (`transparent_hugepage=never`, THP disabled for the process, not
    /// Linux with glibc) or the file is empty: ORT's own mapping of the file is as good then, and its pages
    /// stay reclaimable.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub fn read(path: &std::path::Path, ranges: &[(usize, usize)]) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::FileExt;
        if !huge_pages_offered() {
            return Ok(None);
        }
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Ok(None);
        }
        for &(offset, n) in ranges {
            if offset.checked_add(n).is_none_or(|end| end > len) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("bytes {offset}..{} past the file's end ({len} bytes)", offset.saturating_add(n)),
                ));
            }
        }
        let map_len = len.div_ceil(HUGE_PAGE).saturating_add(1).saturating_mul(HUGE_PAGE);
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let data = base.wrapping_add(base.align_offset(HUGE_PAGE));
        let copy = Self { base, map_len, data, len };
        // SAFETY: `data .. data + len rounded up to 2 MiB` lies inside the mapping (one spare huge page of
        // slack). Best effort: a refusal leaves small pages, the contents are the same.
        unsafe { libc::madvise(data.cast(), len.div_ceil(HUGE_PAGE) * HUGE_PAGE, libc::MADV_HUGEPAGE) };
        // SAFETY: `len` bytes from `data`, inside the mapping, zero-filled by the kernel, owned by `copy`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(copy.data, len) };
        for &(offset, n) in ranges {
            file.read_exact_at(&mut bytes[offset..offset + n], offset as u64)?;
        }
        Ok(Some(copy))
    }

    /// Not Linux with glibc: no copy.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn read(_path: &std::path::Path, _ranges: &[(usize, usize)]) -> std::io::Result<Option<Self>> {
        Ok(None)
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.data
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an empty file gets no copy.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HugePageCopy {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: the mapping `read` made, unmapped once; whoever borrowed the bytes (ORT's session)
        // is gone by now (the owner drops the session first).
        unsafe {
            libc::munmap(self.base.cast(), self.map_len);
        }
    }
}

/// Whether this process gets transparent huge pages where it asks (`MADV_HUGEPAGE`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn huge_pages_offered() -> bool {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    // SAFETY: prctl with PR_GET_THP_DISABLE reads a flag of this process.
    let off_here = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } == 1;
    (thp.contains("[always]") || thp.contains("[madvise]")) && !off_here
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:               65536 kB
AnonHugePages:      2048 kB
7f1000000000-7f1004000000 r--s 00000000 fd:01 1234                       /models/st 7b/decoder.onnx.data
Size:              65536 kB
Rss:                1024 kB
7ffd00000000-7ffd04000000 rw-p 00000000 00:00 0                          [stack]
Rss:               65536 kB
55d000000000-55d000100000 rw-p 00000000 00:00 0                          [heap]
Rss:                1024 kB
";

    #[test]
    fn smaps_mappings_and_the_ones_worth_huge_pages() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!((maps[0].start, maps[0].end, maps[0].rss), (0x7f00_0000_0000, 0x7f00_0400_0000, 64 << 20));
        assert_eq!(maps[1].name, "/models/st 7b/decoder.onnx.data");
        assert_eq!(maps[1].rss, 1 << 20);
        assert_eq!((maps[0].anon_huge, maps[1].anon_huge), (2 << 20, 0));
        let picked: Vec<bool> = maps.iter().map(|m| wanted(m, MIN_BYTES)).collect();
        // Resident anonymous memory yes; a mostly unread file mapping, the stack, a small heap no.
        assert_eq!(picked, [true, false, false, false]);
        assert!(!wanted(&maps[0], 128 << 20), "below min_bytes");
    }

    /// A resident 64 MiB allocation is collapsed into huge pages where the kernel offers them (its
    /// contents kept); where it does not (`never`, an old kernel) the call changes nothing.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_resident_allocation_gets_huge_pages() {
        let len = 64usize << 20;
        let data: Vec<u64> = (0..len as u64 / 8).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let sum = data.iter().fold(0u64, |a, &x| a.wrapping_add(x));
        let done = back_with_huge_pages(len as u64 / 2);
        assert_eq!(data.iter().fold(0u64, |a, &x| a.wrapping_add(x)), sum, "contents kept");
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        // MADV_COLLAPSE came with Linux 6.1.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        // SAFETY: prctl with PR_GET_THP_DISABLE reads a flag of this process.
        let thp_off_here = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } == 1;
        let offered =
            (thp.contains("[always]") || thp.contains("[madvise]")) && (major, minor) >= (6, 1) && !thp_off_here;
        assert!(done.asked >= 1, "the allocation was not picked: {done:?}");
        // A kernel short of free huge pages (fragmented memory, a tight cgroup) refuses with EAGAIN or
        // ENOMEM: the call is best effort and that is not a fault of ours.
        let short = done.collapsed == 0 && matches!(done.refused, Some(libc::EAGAIN | libc::ENOMEM));
        if short {
            eprintln!("the kernel had no huge pages to give: {done:?}");
        }
        if offered && !short {
            // The vector's own range now has huge pages.
            let at = data.as_ptr() as usize;
            let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").unwrap());
            let huge_kb = maps.iter().find(|m| m.start <= at && at < m.end).map_or(0, |m| m.anon_huge / 1024);
            assert!(done.collapsed >= 1 && huge_kb >= 32 << 10, "THP {thp:?}, {release}: {done:?}, {huge_kb} kB huge");
        }
    }

    /// A copy holds each range read at its file offset, zeros elsewhere (never read, never touched), and
    /// starts on a 2 MiB boundary; a range past the file's end is an error, not a short copy.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_copy_holds_the_ranges_read_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.data");
        let bytes: Vec<u8> = (0..5u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let ranges = [(0, 100), (3 << 20, 4096), (bytes.len() - 7, 7)];
        let Some(copy) = HugePageCopy::read(&path, &ranges).unwrap() else {
            assert!(!huge_pages_offered(), "huge pages are offered, yet no copy");
            return;
        };
        assert_eq!(copy.len(), bytes.len());
        assert_eq!(copy.as_ptr() as usize % HUGE_PAGE, 0);
        // SAFETY: the copy's own `len` bytes, alive for this scope.
        let held = unsafe { std::slice::from_raw_parts(copy.as_ptr(), copy.len()) };
        for &(offset, n) in &ranges {
            assert_eq!(&held[offset..offset + n], &bytes[offset..offset + n], "range at {offset}");
        }
        assert!(held[100..3 << 20].iter().all(|&b| b == 0), "bytes outside the ranges were read");
        let err = HugePageCopy::read(&path, &[(bytes.len() - 10, 11)]).err().expect("past the end");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }
}
