//! Transparent huge pages for the weights a decode step streams.
//!
//! Every decode step reads all the decoder's weights (4 GB on the 7B) once. With 4 KiB pages that is a
//! million TLB misses per token; with 2 MiB pages, two thousand. ORT holds the weights in large
//! allocations of its own (MLAS's prepacked copies) or in its mapping of the weight file, which Linux
//! backs with small pages unless told otherwise (`transparent_hugepage=madvise`, the common default).
//! After the sessions are built, [`back_with_huge_pages`] asks the kernel to back each large, resident
//! mapping with huge pages now (`MADV_HUGEPAGE` then `MADV_COLLAPSE`, Linux 6.1+): best effort, the
//! contents unchanged; a kernel that refuses leaves the small pages (docs/PERFORMANCE.md#huge-pages).

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
}
