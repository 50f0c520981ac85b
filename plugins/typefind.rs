//! Type finder for FWHT streams (`video/x-fwht`, files `*.fwht`), so that
//! `decodebin`/`playbin` recognise what the kernel's vicodec (or our encoder)
//! writes: frames back to back, each a 44-byte header (magic `4f4f4f4f
//! ffffffff`, version, size, flags, colorimetry, payload size) and its payload.
//!
//! Detection looks for the 8-byte magic in the first [`SCAN_WINDOW`] bytes
//! (the stateful decoder skips anything before it), validates the header with
//! the codec's own [`parse_header`] (version, size, a component layout some
//! raw format has) plus the decoder's payload bound, and then checks that the
//! next frame starts where this one says it ends:
//!
//! | first header | what follows it                 | probability     |
//! |--------------|---------------------------------|-----------------|
//! | at byte 0    | another valid header            | `Maximum`       |
//! | at byte 0    | the end of the stream (1 frame) | `NearlyCertain` |
//! | at byte 0    | unknown (not readable)          | `Likely`        |
//! | at byte 0    | something else                  | `Possible`      |
//! | later        | another header / the end        | `Likely`        |
//! | later        | unknown                         | `Possible`      |
//!
//! A later header followed by something else is not suggested. The caps are
//! `video/x-fwht, width=W, height=H` from the first header.

use std::sync::LazyLock;

use gst::glib;

use super::common::formats::{FWHT_MEDIA_TYPE, fwht_caps};
use crate::vpu::codec::fwht::{FwhtHeader, HEADER_SIZE, parse_header};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rsvpu-typefind",
        gst::DebugColorFlags::empty(),
        Some("rsvpu FWHT type finder"),
    )
});

/// The FWHT magic as it appears in the byte stream (two big-endian words).
const MAGIC: [u8; 8] = [0x4f, 0x4f, 0x4f, 0x4f, 0xff, 0xff, 0xff, 0xff];

/// How far into the stream the first header is looked for.
pub(crate) const SCAN_WINDOW: usize = 4096;

/// Registers the `video/x-fwht` type finder with `plugin`.
///
/// Rank `PRIMARY`: every type finder runs for every stream in rank order
/// until one is certain (the ones whose extension matches the file go first),
/// so the rank does not decide whether a `.fwht` file is found, only the order
/// and who wins a tie. Ours is cheap (one small peek up front) and exact (an
/// 8-byte magic, a validated header, usually a second header where the first
/// frame ends), so it may run early and win ties against the heuristic
/// finders that suggest something on almost any data; it never claims other
/// media because it suggests nothing without the magic and a valid header.
pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::TypeFind::register(
        Some(plugin),
        FWHT_MEDIA_TYPE,
        gst::Rank::PRIMARY,
        Some("fwht"),
        Some(&fwht_caps(None)),
        |tf| {
            let mut src = TypeFindSource(tf);
            if let Some(found) = detect(&mut src) {
                gst::debug!(
                    CAT,
                    "FWHT {}x{} header at byte {}: {:?}",
                    found.header.width,
                    found.header.height,
                    found.offset,
                    found.probability
                );
                let caps = fwht_caps(Some((found.header.width, found.header.height)));
                src.0.suggest(found.probability, &caps);
            }
        },
    )
}

/// What the type finder reads from: a [`gst::TypeFind`] in the plugin, a
/// byte slice in the unit tests.
trait Source {
    /// `size` bytes at `offset`, `None` when they are not (all) available.
    fn peek(&mut self, offset: u64, size: u32) -> Option<&[u8]>;
    /// Total length of the stream when known.
    fn length(&mut self) -> Option<u64>;
}

struct TypeFindSource<'a>(&'a mut gst::TypeFind);

impl Source for TypeFindSource<'_> {
    fn peek(&mut self, offset: u64, size: u32) -> Option<&[u8]> {
        self.0.peek(i64::try_from(offset).ok()?, size)
    }

    fn length(&mut self) -> Option<u64> {
        self.0.length()
    }
}

#[cfg(test)]
fn slice_peek(data: &[u8], offset: u64, size: u32) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    data.get(start..end)
}

#[cfg(test)]
impl Source for &[u8] {
    fn peek(&mut self, offset: u64, size: u32) -> Option<&[u8]> {
        slice_peek(self, offset, size)
    }

    fn length(&mut self) -> Option<u64> {
        Some(self.len() as u64)
    }
}

/// A detected FWHT stream.
#[derive(Debug, Clone, Copy)]
struct Found {
    header: FwhtHeader,
    /// Where the first valid header starts.
    offset: u64,
    probability: gst::TypeFindProbability,
}

/// What the bytes right after the first frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A valid FWHT header.
    Header,
    /// The stream ends exactly there.
    End,
    /// Not readable (stream shorter, or of unknown length and not there yet).
    Unknown,
    /// Bytes that are not an FWHT header.
    Other,
}

/// The header at `offset`, if it is a valid one whose payload is within what
/// the decoder accepts.
fn header_at<S: Source>(src: &mut S, offset: u64) -> Option<FwhtHeader> {
    let bytes = src.peek(offset, HEADER_SIZE as u32)?;
    let header = parse_header(bytes).ok()?;
    (header.payload_size as usize <= header.max_payload_size()).then_some(header)
}

/// The first [`SCAN_WINDOW`] bytes (fewer when the stream is shorter).
fn window<S: Source>(src: &mut S) -> Option<Vec<u8>> {
    let wanted = match src.length() {
        Some(len) => usize::try_from(len).map_or(SCAN_WINDOW, |l| l.min(SCAN_WINDOW)),
        None => SCAN_WINDOW,
    };
    // With an unknown length, a short stream cannot give the whole window:
    // try smaller ones down to one header.
    let mut size = wanted;
    loop {
        if size < HEADER_SIZE {
            return None;
        }
        if let Some(bytes) = src.peek(0, size as u32) {
            return Some(bytes.to_vec());
        }
        size /= 2;
    }
}

fn detect<S: Source>(src: &mut S) -> Option<Found> {
    let window = window(src)?;
    let candidates = window
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == MAGIC)
        .map(|(i, _)| i as u64);
    for offset in candidates {
        let Some(header) = header_at(src, offset) else {
            continue;
        };
        let end = offset + header.frame_size() as u64;
        let next = if src.length() == Some(end) {
            Next::End
        } else if header_at(src, end).is_some() {
            Next::Header
        } else if src.peek(end, HEADER_SIZE as u32).is_some() {
            Next::Other
        } else {
            Next::Unknown
        };
        use gst::TypeFindProbability as P;
        let probability = match (offset, next) {
            (0, Next::Header) => P::Maximum,
            (0, Next::End) => P::NearlyCertain,
            (0, Next::Unknown) => P::Likely,
            (0, Next::Other) => P::Possible,
            (_, Next::Header | Next::End) => P::Likely,
            (_, Next::Unknown) => P::Possible,
            // Magic in the middle of something else, with a size that leads
            // nowhere: not FWHT.
            (_, Next::Other) => continue,
        };
        return Some(Found {
            header,
            offset,
            probability,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use gst::TypeFindProbability as P;

    use super::*;
    use crate::m2m::Colorimetry;
    use crate::vpu::codec::fwht::{PixelEncoding, flags};

    fn header(width: u32, height: u32, payload_size: u32) -> FwhtHeader {
        FwhtHeader {
            version: 3,
            width,
            height,
            flags: 0xa0000 | flags::I_FRAME,
            colorimetry: Colorimetry {
                colorspace: 3,
                ..Default::default()
            },
            payload_size,
            components: 3,
            pixel_encoding: Some(PixelEncoding::Yuv),
        }
    }

    /// `frames` frames of `payload` bytes each (payload of 0x00).
    fn stream(frames: usize, payload: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..frames {
            out.extend_from_slice(&header(640, 480, payload).to_bytes());
            out.resize(out.len() + payload as usize, 0);
        }
        out
    }

    fn probability(data: &[u8]) -> Option<(P, u64, u32, u32)> {
        let mut src = data;
        detect(&mut src).map(|f| (f.probability, f.offset, f.header.width, f.header.height))
    }

    fn same(a: Option<(P, u64, u32, u32)>, b: Option<(P, u64, u32, u32)>) -> bool {
        // TypeFindProbability has no PartialEq; compare through Debug.
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn probabilities_follow_the_table() {
        let two = stream(2, 100);
        assert!(same(probability(&two), Some((P::Maximum, 0, 640, 480))));
        let one = stream(1, 100);
        assert!(same(
            probability(&one),
            Some((P::NearlyCertain, 0, 640, 480))
        ));
        // Cut inside the second header: the first frame ends, nothing readable.
        let cut = &two[..144 + 20];
        assert!(same(probability(cut), Some((P::Likely, 0, 640, 480))));
        // A header alone (payload missing).
        assert!(same(
            probability(&one[..44]),
            Some((P::Likely, 0, 640, 480))
        ));
        // The first frame is followed by junk.
        let mut junk = one.clone();
        junk.extend_from_slice(&[0x55; 64]);
        assert!(same(probability(&junk), Some((P::Possible, 0, 640, 480))));
        // Bytes before the first header.
        let mut late = vec![0x12; 300];
        late.extend_from_slice(&two);
        assert!(same(probability(&late), Some((P::Likely, 300, 640, 480))));
        let mut late_cut = vec![0x12; 300];
        late_cut.extend_from_slice(&one[..44]);
        assert!(same(
            probability(&late_cut),
            Some((P::Possible, 300, 640, 480))
        ));
        let mut late_junk = vec![0x12; 300];
        late_junk.extend_from_slice(&junk);
        assert!(same(probability(&late_junk), None));
    }

    #[test]
    fn rejects_near_misses() {
        let two = stream(2, 100);
        // Truncated header.
        assert!(same(probability(&two[..43]), None));
        assert!(same(probability(&two[..8]), None));
        // Bad version, zero size, payload larger than a raw frame.
        let mut bad = stream(1, 100);
        bad[11] = 9;
        assert!(same(probability(&bad), None));
        // ... but a valid second header is still found.
        let mut bad_first = two.clone();
        bad_first[11] = 9;
        assert!(same(
            probability(&bad_first),
            Some((P::Likely, 144, 640, 480))
        ));
        let zero = header(0, 480, 100).to_bytes();
        assert!(same(probability(&zero), None));
        let mut huge = stream(1, 0);
        huge[40..44].copy_from_slice(&(640u32 * 480 * 2).to_be_bytes());
        assert!(same(probability(&huge), None));
        // Magic beyond the scan window.
        let mut far = vec![0u8; SCAN_WINDOW];
        far.extend_from_slice(&two);
        assert!(same(probability(&far), None));
    }

    #[test]
    fn finds_a_later_header_after_an_invalid_one() {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&[0; 40]); // magic, then version 0
        data.extend_from_slice(&stream(2, 100));
        assert!(same(probability(&data), Some((P::Likely, 48, 640, 480))));
    }

    /// A source of unknown length that only has `n` bytes yet.
    struct Partial<'a>(&'a [u8]);
    impl Source for Partial<'_> {
        fn peek(&mut self, offset: u64, size: u32) -> Option<&[u8]> {
            slice_peek(self.0, offset, size)
        }
        fn length(&mut self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn unknown_length_short_streams() {
        let two = stream(2, 100);
        let mut src = Partial(&two);
        let found = detect(&mut src).expect("found");
        assert!(matches!(found.probability, P::Maximum));
        let one = stream(1, 100);
        let mut src = Partial(&one);
        assert!(matches!(
            detect(&mut src).map(|f| f.probability),
            Some(P::Likely)
        ));
        let mut src = Partial(&one[..40]);
        assert!(detect(&mut src).is_none());
    }
}
