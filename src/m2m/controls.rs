//! Values of the codec controls that are enumerations in V4L2
//! (`V4L2_CID_MPEG_VIDEO_BITRATE_MODE`, `..._H264_PROFILE`, `..._H264_LEVEL`),
//! with the V4L2 menu indices as discriminants, so the kernel backend passes
//! them straight through, and the H.264 level limits (ITU-T H.264 Table A-1)
//! that decide whether a stream fits a level.

use std::fmt;

/// `V4L2_CID_MPEG_VIDEO_BITRATE_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum BitrateMode {
    /// `V4L2_MPEG_VIDEO_BITRATE_MODE_VBR`: the average rate is the bitrate.
    #[default]
    Vbr = 0,
    /// `V4L2_MPEG_VIDEO_BITRATE_MODE_CBR`: constant rate, with a one-second buffer.
    Cbr = 1,
    /// `V4L2_MPEG_VIDEO_BITRATE_MODE_CQ`: no rate control, constant quantiser.
    ConstantQp = 2,
}

impl BitrateMode {
    pub fn from_v4l2(v: u32) -> Option<BitrateMode> {
        [BitrateMode::Vbr, BitrateMode::Cbr, BitrateMode::ConstantQp]
            .into_iter()
            .find(|m| *m as u32 == v)
    }
}

/// `V4L2_CID_MPEG_VIDEO_H264_PROFILE` (the profiles an encoder here offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum H264Profile {
    Baseline = 0,
    ConstrainedBaseline = 1,
    Main = 2,
    High = 4,
}

impl H264Profile {
    /// Every profile, most capable first.
    pub const ALL: &'static [H264Profile] = &[
        H264Profile::High,
        H264Profile::Main,
        H264Profile::ConstrainedBaseline,
        H264Profile::Baseline,
    ];

    pub fn from_v4l2(v: u32) -> Option<H264Profile> {
        Self::ALL.iter().copied().find(|p| *p as u32 == v)
    }

    /// The name GStreamer's caps use (`profile=` of `video/x-h264`).
    pub const fn caps_name(self) -> &'static str {
        match self {
            H264Profile::Baseline => "baseline",
            H264Profile::ConstrainedBaseline => "constrained-baseline",
            H264Profile::Main => "main",
            H264Profile::High => "high",
        }
    }

    pub fn from_caps_name(name: &str) -> Option<H264Profile> {
        Self::ALL.iter().copied().find(|p| p.caps_name() == name)
    }
}

impl fmt::Display for H264Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.caps_name())
    }
}

/// One H.264 level: its V4L2 menu index, name, `level_idc` and the limits
/// of Table A-1 an encoder must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Level {
    /// `V4L2_MPEG_VIDEO_H264_LEVEL_*` menu index.
    pub v4l2: u32,
    /// As in caps (`level=3.1`).
    pub name: &'static str,
    /// `level_idc` of the SPS (1b is coded as 9 here, as x264 and FFmpeg do).
    pub idc: u32,
    /// Max macroblocks per second.
    pub max_mbps: u64,
    /// Max frame size in macroblocks.
    pub max_fs: u64,
    /// Max video bitrate of Baseline/Main, kbit/s (High: x1.25).
    pub max_br_kbps: u64,
}

const fn lvl(
    v4l2: u32,
    name: &'static str,
    idc: u32,
    max_mbps: u64,
    max_fs: u64,
    max_br_kbps: u64,
) -> H264Level {
    H264Level {
        v4l2,
        name,
        idc,
        max_mbps,
        max_fs,
        max_br_kbps,
    }
}

impl H264Level {
    /// Levels 1 to 5.2 in V4L2 menu order.
    pub const ALL: &'static [H264Level] = &[
        lvl(0, "1", 10, 1_485, 99, 64),
        lvl(1, "1b", 9, 1_485, 99, 128),
        lvl(2, "1.1", 11, 3_000, 396, 192),
        lvl(3, "1.2", 12, 6_000, 396, 384),
        lvl(4, "1.3", 13, 11_880, 396, 768),
        lvl(5, "2", 20, 11_880, 396, 2_000),
        lvl(6, "2.1", 21, 19_800, 792, 4_000),
        lvl(7, "2.2", 22, 20_250, 1_620, 4_000),
        lvl(8, "3", 30, 40_500, 1_620, 10_000),
        lvl(9, "3.1", 31, 108_000, 3_600, 14_000),
        lvl(10, "3.2", 32, 216_000, 5_120, 20_000),
        lvl(11, "4", 40, 245_760, 8_192, 20_000),
        lvl(12, "4.1", 41, 245_760, 8_192, 50_000),
        lvl(13, "4.2", 42, 522_240, 8_704, 50_000),
        lvl(14, "5", 50, 589_824, 22_080, 135_000),
        lvl(15, "5.1", 51, 983_040, 36_864, 240_000),
        lvl(16, "5.2", 52, 2_073_600, 36_864, 240_000),
    ];

    pub fn from_v4l2(v: u32) -> Option<H264Level> {
        Self::ALL.iter().copied().find(|l| l.v4l2 == v)
    }

    pub fn from_caps_name(name: &str) -> Option<H264Level> {
        Self::ALL.iter().copied().find(|l| l.name == name)
    }

    /// Why a `width` x `height` stream at `fps` (num/den) does not fit this
    /// level, or `None` when it does. A frame rate of 0 is not checked.
    pub fn check(&self, width: u32, height: u32, fps: (u32, u32)) -> Option<String> {
        let mbs = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
        if mbs > self.max_fs {
            return Some(format!(
                "level {} allows {} macroblocks per frame, {width}x{height} has {mbs}",
                self.name, self.max_fs
            ));
        }
        let (num, den) = fps;
        if num > 0 && den > 0 {
            let rate = mbs * u64::from(num) / u64::from(den);
            if rate > self.max_mbps {
                return Some(format!(
                    "level {} allows {} macroblocks per second, {width}x{height} at \
                     {num}/{den} fps needs {rate}",
                    self.name, self.max_mbps
                ));
            }
        }
        None
    }

    /// The lowest level that fits, if any.
    pub fn lowest_fitting(width: u32, height: u32, fps: (u32, u32)) -> Option<H264Level> {
        Self::ALL
            .iter()
            .copied()
            .filter(|l| l.v4l2 != 1)
            .find(|l| l.check(width, height, fps).is_none())
    }

    /// The highest video bitrate this level allows a `profile` stream, bit/s:
    /// Table A-1's MaxBR times cpbBrVclFactor (1000 for Baseline and Main,
    /// 1250 for High, Table A-2).
    pub fn max_bitrate(&self, profile: H264Profile) -> u64 {
        let factor = if profile == H264Profile::High {
            1250
        } else {
            1000
        };
        self.max_br_kbps * factor
    }

    /// The lowest level that fits the frame size and rate and also allows a
    /// peak video bitrate of `peak` (bit/s, in that profile), so the level
    /// the stream announces holds its bitrate too; when no level allows
    /// that bitrate, the lowest that fits the frame size and rate. `None`
    /// for `peak` (no bitrate bound, constant QP): [`Self::lowest_fitting`].
    pub fn lowest_fitting_rate(
        width: u32,
        height: u32,
        fps: (u32, u32),
        peak: Option<(u64, H264Profile)>,
    ) -> Option<H264Level> {
        let fits = Self::lowest_fitting(width, height, fps)?;
        let Some((bitrate, profile)) = peak else {
            return Some(fits);
        };
        Self::ALL
            .iter()
            .copied()
            .filter(|l| l.v4l2 != 1 && l.v4l2 >= fits.v4l2)
            .find(|l| l.max_bitrate(profile) >= bitrate)
            .or(Some(fits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_limits_follow_table_a1() {
        let l31 = H264Level::from_caps_name("3.1").unwrap();
        assert_eq!(l31.idc, 31);
        assert!(l31.check(1280, 720, (30, 1)).is_none());
        let e = l31.check(1920, 1080, (30, 1)).unwrap();
        assert!(e.contains("8160"), "{e}");
        let l4 = H264Level::from_caps_name("4").unwrap();
        assert!(l4.check(1920, 1080, (30, 1)).is_none());
        let e = l4.check(1920, 1080, (60, 1)).unwrap();
        assert!(e.contains("489600"), "{e}");
        assert_eq!(
            H264Level::lowest_fitting(1920, 1080, (30, 1)).unwrap().name,
            "4"
        );
        assert_eq!(
            H264Level::lowest_fitting(320, 240, (30, 1)).unwrap().name,
            "1.3"
        );
    }

    #[test]
    fn the_automatic_level_holds_the_bitrate_too() {
        let lowest = |w, h, peak| {
            H264Level::lowest_fitting_rate(w, h, (30, 1), peak)
                .unwrap()
                .name
        };
        // 320x240: level 1.3 by size, whose 768 kbit/s a 4 Mbit/s peak exceeds.
        assert_eq!(lowest(320, 240, None), "1.3");
        assert_eq!(lowest(320, 240, Some((700_000, H264Profile::Main))), "1.3");
        assert_eq!(lowest(320, 240, Some((4_096_000, H264Profile::Main))), "3");
        // High allows 1.25x: 2.1's 4000 kbit/s becomes 5000.
        assert_eq!(
            lowest(320, 240, Some((4_096_000, H264Profile::High))),
            "2.1"
        );
        assert_eq!(
            lowest(1920, 1080, Some((8_000_000, H264Profile::Main))),
            "4"
        );
        assert_eq!(
            lowest(1920, 1080, Some((30_000_000, H264Profile::Main))),
            "4.1"
        );
        // Beyond every level's bitrate: the size decides, x264 warns.
        assert_eq!(
            lowest(1920, 1080, Some((900_000_000, H264Profile::Main))),
            "4"
        );
    }

    #[test]
    fn menus_round_trip() {
        for p in H264Profile::ALL {
            assert_eq!(H264Profile::from_v4l2(*p as u32), Some(*p));
            assert_eq!(H264Profile::from_caps_name(p.caps_name()), Some(*p));
        }
        for l in H264Level::ALL {
            assert_eq!(H264Level::from_v4l2(l.v4l2), Some(*l));
        }
        assert_eq!(BitrateMode::from_v4l2(2), Some(BitrateMode::ConstantQp));
        assert_eq!(BitrateMode::from_v4l2(3), None);
    }
}
